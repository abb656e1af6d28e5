#ifndef MAKE_DEMO_UTIL_H
#define MAKE_DEMO_UTIL_H

int triple(int x);

#endif
