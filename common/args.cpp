// Flag parsing (see args.h). Values are kept as strings in command-line order; the typed
// getters parse on demand so that each error names the flag the user typed.
#include "common/args.h"

#include <algorithm>
#include <sstream>
#include <stdexcept>

#include "common/error.h"

namespace condensa {

namespace {

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

// The value of `f` parsed by `parse` (std::stod, std::stoll, ...), which must read all of it;
// `fallback` when absent; otherwise ConfigError "flag <f> expects <expected>, got '<value>'".
template <class T, class Parse>
T typed_value(
    const ParsedArgs& a, const std::string& f, T fallback, const char* expected, Parse parse) {
  if (!a.has(f)) return fallback;
  const std::string s = a.get(f);
  bool ok = false;
  T v{};
  try {
    size_t pos = 0;
    v = parse(s, &pos);
    ok = pos == s.size();
  } catch (const std::exception&) {  // invalid_argument, out_of_range
  }
  CONDENSA_CHECK(ok, ConfigError, "flag ", f, " expects ", expected, ", got '", s, "'");
  return v;
}

}  // namespace

std::string ParsedArgs::get(const std::string& f, const std::string& fallback) const {
  auto it = flags.find(f);
  return it == flags.end() || it->second.empty() ? fallback : it->second.back();
}

std::vector<std::string> ParsedArgs::get_all(const std::string& f) const {
  auto it = flags.find(f);
  return it == flags.end() ? std::vector<std::string>{} : it->second;
}

double ParsedArgs::get_double(const std::string& f, double fallback) const {
  return typed_value(*this, f, fallback, "a number",
                     [](const std::string& s, size_t* pos) { return std::stod(s, pos); });
}

int64_t ParsedArgs::get_int(const std::string& f, int64_t fallback) const {
  return typed_value<int64_t>(
      *this, f, fallback, "an integer",
      [](const std::string& s, size_t* pos) { return static_cast<int64_t>(std::stoll(s, pos)); });
}

uint64_t ParsedArgs::get_uint(const std::string& f, uint64_t fallback) const {
  return typed_value<uint64_t>(
      *this, f, fallback, "a non-negative integer", [](const std::string& s, size_t* pos) {
        // std::stoull accepts "-3" (wrapping it) and leading spaces: digits only.
        if (s.empty() || s.find_first_not_of("0123456789") != std::string::npos)
          throw std::invalid_argument(s);
        return static_cast<uint64_t>(std::stoull(s, pos));
      });
}

ParsedArgs parse_args(const std::vector<std::string>& args,
                      const std::vector<std::string>& value_flags,
                      const std::vector<std::string>& bool_flags,
                      const std::vector<std::string>& repeatable_flags) {
  ParsedArgs out;
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
    const size_t eq = a.find('=');
    if (eq != std::string::npos) {
      flag = a.substr(0, eq);
      value = a.substr(eq + 1);
    }
    if (contains(bool_flags, flag)) {
      out.flags[flag].push_back(eq != std::string::npos ? value : "true");
      continue;
    }
    if (!contains(value_flags, flag) && !contains(repeatable_flags, flag)) {
      std::string known;
      for (const auto* list : {&value_flags, &repeatable_flags, &bool_flags})
        for (const auto& f : *list) known += f + " ";
      throw ConfigError(str("unknown flag '", flag, "' (known: ", known, "--help)"));
    }
    if (eq == std::string::npos) {
      CONDENSA_CHECK(i + 1 < args.size(), ConfigError, "flag ", flag, " needs a value");
      value = args[++i];
    }
    out.flags[flag].push_back(value);
  }
  for (const auto& [flag, values] : out.flags) {
    CONDENSA_CHECK(values.size() == 1 || contains(repeatable_flags, flag), ConfigError, "flag ",
                   flag, " given ", values.size(), " times; it takes one value");
  }
  return out;
}

bool parse_int_list(const std::string& text, std::vector<int64_t>* out, std::string* bad) {
  std::string spaced = text;
  for (char& c : spaced) {
    if (c == '[' || c == ']' || c == ',') c = ' ';
  }
  std::istringstream in(spaced);
  std::string item;
  out->clear();
  while (in >> item) {
    size_t used = 0;
    int64_t v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != item.size()) {
      *bad = item;
      return false;
    }
    out->push_back(v);
  }
  return true;
}

}  // namespace condensa
