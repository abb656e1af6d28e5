#include "mathops.h"

int add(int a, int b) { return a + b; }

int scale(int value) { return value * SCALE_FACTOR; }
