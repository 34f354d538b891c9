#include "common/args.h"

#include <algorithm>

#include "common/error.h"

namespace condensa {

std::string ParsedArgs::get(const std::string& f, const std::string& fallback) const {
  auto it = flags.find(f);
  return it == flags.end() || it->second.empty() ? fallback : it->second.back();
}

double ParsedArgs::get_double(const std::string& f, double fallback) const {
  if (!has(f)) return fallback;
  try {
    size_t pos = 0;
    auto s = get(f);
    double v = std::stod(s, &pos);
    if (pos != s.size()) throw std::invalid_argument(s);
    return v;
  } catch (const std::exception&) {
    throw ConfigError(str(f, ": expected a number, got '", get(f), "'"));
  }
}

int64_t ParsedArgs::get_int(const std::string& f, int64_t fallback) const {
  if (!has(f)) return fallback;
  try {
    size_t pos = 0;
    auto s = get(f);
    long long v = std::stoll(s, &pos);
    if (pos != s.size()) throw std::invalid_argument(s);
    return v;
  } catch (const std::exception&) {
    throw ConfigError(str(f, ": expected an integer, got '", get(f), "'"));
  }
}

ParsedArgs parse_args(const std::vector<std::string>& args,
                      const std::vector<std::string>& value_flags,
                      const std::vector<std::string>& bool_flags) {
  ParsedArgs out;
  auto is = [](const std::vector<std::string>& v, const std::string& s) {
    return std::find(v.begin(), v.end(), s) != v.end();
  };
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      out.help = true;
      continue;
    }
    if (a.rfind("--", 0) != 0) {
      out.positional.push_back(a);
      continue;
    }
    std::string flag = a, value;
    bool has_value = false;
    if (auto eq = a.find('='); eq != std::string::npos) {
      flag = a.substr(0, eq);
      value = a.substr(eq + 1);
      has_value = true;
    }
    if (is(bool_flags, flag)) {
      out.flags[flag].push_back(has_value ? value : "true");
      continue;
    }
    if (!is(value_flags, flag)) {
      std::string known;
      for (auto& f : value_flags) known += " " + f;
      for (auto& f : bool_flags) known += " " + f;
      throw ConfigError(str("unknown option '", flag, "' (known:", known, " --help)"));
    }
    if (!has_value) {
      if (i + 1 >= args.size()) throw ConfigError(str("option ", flag, " needs a value"));
      value = args[++i];
    }
    out.flags[flag].push_back(value);
  }
  return out;
}

}  // namespace condensa
