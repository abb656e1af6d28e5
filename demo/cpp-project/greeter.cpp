#include "greeter.h"

namespace demo {

std::string greeting(const std::string& name) {
    return "Hello, " + name + ", from a two-file C++ project!";
}

}  // namespace demo
