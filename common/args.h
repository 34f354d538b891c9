// The one command-line flag parser every subcommand uses: `--flag value`, `--flag=value`,
// boolean flags and positional arguments.
//
// Key design choice: one rule for repeated flags, enforced while parsing. A flag takes one value
// unless the subcommand declares it repeatable (`--set a.b=c --set d.e=f`, `--input a --input
// b`); giving a single-valued flag twice is a ConfigError naming the flag and the count, never a
// silent "last one wins". Unknown flags and missing values are ConfigErrors naming the flag, so a
// typo never silently runs something else.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace condensa {

// Parsed arguments. Every accessor takes the flag with its dashes ("--out").
struct ParsedArgs {
  std::vector<std::string> positional;
  std::map<std::string, std::vector<std::string>> flags;  // "--set" -> {"a.b=c", ...}
  bool help = false;                                      // --help or -h was given

  bool has(const std::string& f) const { return flags.count(f) > 0; }
  // The value of `f`, or `fallback` when absent (for a repeatable flag: the last value).
  std::string get(const std::string& f, const std::string& fallback = "") const;
  // Every value of a repeatable flag, in command-line order; empty when absent.
  std::vector<std::string> get_all(const std::string& f) const;
  // Typed values; a value that does not parse completely is a ConfigError naming `f` and it.
  double get_double(const std::string& f, double fallback) const;
  int64_t get_int(const std::string& f, int64_t fallback) const;
  uint64_t get_uint(const std::string& f, uint64_t fallback) const;  // digits only
};

// Parses `args` (the arguments after the subcommand). `value_flags` take one value,
// `bool_flags` none (has() tells whether they were given), `repeatable_flags` one value per
// occurrence, any number of times. Throws ConfigError for a flag in none of the lists (naming it
// and the known ones), a value-taking flag without a value, or a non-repeatable flag given more
// than once.
ParsedArgs parse_args(const std::vector<std::string>& args,
                      const std::vector<std::string>& value_flags,
                      const std::vector<std::string>& bool_flags = {},
                      const std::vector<std::string>& repeatable_flags = {});

// Integers separated by commas and/or spaces, optionally in brackets ("3,4", "[3, 4]"), into
// *out. False, with the offending item in *bad, when an item is not an integer.
bool parse_int_list(const std::string& text, std::vector<int64_t>* out, std::string* bad);

}  // namespace condensa
