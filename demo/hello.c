/* The smallest C program distc builds: `distc build demo/hello.c`. */
#include <stdio.h>

int main(void) {
    printf("Hello from C, built through distc!\n");
    return 0;
}
