// The "large C++ translation unit" of scripts/bench.sh and scripts/bench_mesh.sh: a few
// heavy standard headers (regex, iostream, containers) and some template work.
#include <algorithm>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <regex>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>
template <int N> struct Fib { static constexpr long value = Fib<N - 1>::value + Fib<N - 2>::value; };
template <> struct Fib<0> { static constexpr long value = 0; };
template <> struct Fib<1> { static constexpr long value = 1; };
int main(int argc, char **argv) {
  std::map<std::string, std::vector<int>> m;
  std::unordered_map<int, std::string> u;
  std::regex re("([a-z]+)([0-9]*)");
  for (int i = 1; i < argc; ++i) {
    std::smatch sm;
    std::string s = argv[i];
    if (std::regex_match(s, sm, re)) m[sm[1]].push_back(std::stoi("0" + sm[2].str()));
    u[i] = s;
  }
  std::ostringstream os;
  for (auto &[k, v] : m) { std::sort(v.begin(), v.end()); os << k << v.size(); }
  std::function<long(long)> f = [](long x) { return x * Fib<40>::value; };
  std::cout << os.str() << f(argc) << u.size() << std::endl;
}
