#include <stdio.h>

#include "mathops.h"

int main(void) {
    printf("add(2, 3) = %d, scale(7) = %d\n", add(2, 3), scale(7));
    return 0;
}
