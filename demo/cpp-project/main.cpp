#include <iostream>

#include "greeter.h"

int main() {
    std::cout << demo::greeting("distc") << std::endl;
    return 0;
}
