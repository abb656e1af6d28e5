// The smallest C++ program distc builds: `distc build demo/hello.cpp`.
#include <iostream>

int main() {
    std::cout << "Hello from C++, built through distc!" << std::endl;
    return 0;
}
