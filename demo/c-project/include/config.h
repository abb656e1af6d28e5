/* Included by mathops.h: editing it must invalidate every object that uses it. */
#ifndef DEMO_CONFIG_H
#define DEMO_CONFIG_H

#define SCALE_FACTOR 3

#endif
