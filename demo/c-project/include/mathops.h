/* A C project with its headers in include/: `distc build-project demo/c-project`. */
#ifndef DEMO_MATHOPS_H
#define DEMO_MATHOPS_H

#include "config.h"

int add(int a, int b);
int scale(int value);

#endif
