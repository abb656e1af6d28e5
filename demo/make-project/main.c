#include <stdio.h>

#include "util.h"

int main(void) {
    printf("make demo: triple(14) = %d\n", triple(14));
    return 0;
}
