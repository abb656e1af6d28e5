#include <iostream>

#include "shapes.h"

int main() {
    std::cout << "cmake demo: square_area(6) = " << square_area(6) << std::endl;
    return 0;
}
