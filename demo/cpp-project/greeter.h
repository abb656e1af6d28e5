// A two-file C++ project: `distc build-project demo/cpp-project`.
#pragma once

#include <string>

namespace demo {

// Builds the greeting main() prints; defined in greeter.cpp so the project
// has two translation units that are cached independently.
std::string greeting(const std::string& name);

}  // namespace demo
