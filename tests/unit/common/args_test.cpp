// Tests for common/args.h, the flag parser of every subcommand.
#include "common/args.h"

#include <gtest/gtest.h>

#include <map>
#include <random>
#include <string>
#include <vector>

#include "common/error.h"

namespace condensa {
namespace {

using Strings = std::vector<std::string>;

// The ConfigError message of `fn`, or "" when none was thrown.
template <class Fn>
std::string config_error(Fn fn) {
  try {
    fn();
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

TEST(Args, ValueBoolRepeatableAndPositional) {
  const ParsedArgs a =
      parse_args({"cfg.yaml", "--out", "dir", "--set", "a.b=1", "--json", "--set=c.d=x=y", "more"},
                 {"--out", "--world"}, {"--json", "--quiet"}, {"--set"});
  EXPECT_EQ(a.positional, (Strings{"cfg.yaml", "more"}));
  EXPECT_EQ(a.get("--out"), "dir");
  EXPECT_EQ(a.get_all("--set"), (Strings{"a.b=1", "c.d=x=y"}));  // only the first '=' splits
  EXPECT_EQ(a.get("--set"), "c.d=x=y");
  EXPECT_TRUE(a.has("--json"));
  EXPECT_FALSE(a.has("--quiet"));
  EXPECT_FALSE(a.has("--world"));
  EXPECT_EQ(a.get("--world", "4"), "4");
  EXPECT_EQ(a.get_all("--world"), Strings{});
  EXPECT_FALSE(a.help);
  EXPECT_TRUE(parse_args({"--help"}, {}).help);
  EXPECT_TRUE(parse_args({"x", "-h"}, {}).help);
}

TEST(Args, ValuesMayLookLikeAnything) {
  const ParsedArgs a = parse_args({"--out", "--json", "--name=", "--neg", "-3"},
                                  {"--out", "--name", "--neg"}, {"--json"});
  EXPECT_EQ(a.get("--out"), "--json");  // the word after a value flag is its value
  EXPECT_FALSE(a.has("--json"));
  EXPECT_TRUE(a.has("--name"));
  EXPECT_EQ(a.get("--name", "fallback"), "");
  EXPECT_EQ(a.get_int("--neg", 0), -3);
}

TEST(Args, ASingleValuedFlagGivenTwiceIsAnErrorNamingIt) {
  // One rule for every subcommand: no silent "last one wins".
  EXPECT_TRUE(contains(config_error([] {
                         parse_args({"--out", "a", "--out=b", "--out", "c"}, {"--out"});
                       }),
                       "flag --out given 3 times"));
  EXPECT_TRUE(contains(config_error([] {
                         parse_args({"--json", "--json"}, {}, {"--json"});
                       }),
                       "flag --json given 2 times"));
  EXPECT_EQ(config_error([] {
              parse_args({"--set", "a=1", "--set", "a=2"}, {}, {}, {"--set"});
            }),
            "");
}

TEST(Args, UnknownFlagAndMissingValueNameTheFlag) {
  const std::string unknown = config_error([] {
    parse_args({"--ot", "x"}, {"--out"}, {"--json"}, {"--set"});
  });
  EXPECT_TRUE(contains(unknown, "unknown flag '--ot'")) << unknown;
  EXPECT_TRUE(contains(unknown, "--out --set --json --help")) << unknown;
  EXPECT_TRUE(
      contains(config_error([] { parse_args({"--out"}, {"--out"}); }), "flag --out needs a value"));
  EXPECT_TRUE(contains(config_error([] { parse_args({"--set"}, {}, {}, {"--set"}); }),
                       "flag --set needs a value"));
}

TEST(Args, TypedGettersParseTheWholeValue) {
  const ParsedArgs a = parse_args({"--i=-42", "--d=2.5e-3", "--u=18446744073709551615"},
                                  {"--i", "--d", "--u", "--absent"});
  EXPECT_EQ(a.get_int("--i", 0), -42);
  EXPECT_DOUBLE_EQ(a.get_double("--d", 0), 2.5e-3);
  EXPECT_EQ(a.get_uint("--u", 0), 18446744073709551615ULL);
  EXPECT_EQ(a.get_int("--absent", 7), 7);
  EXPECT_EQ(a.get_uint("--absent", 8), 8u);
  EXPECT_DOUBLE_EQ(a.get_double("--absent", 0.5), 0.5);

  struct Case {
    std::string value;
    std::string get;  // "int", "double" or "uint"
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"12x", "int", "flag --v expects an integer, got '12x'"},
      {"", "int", "flag --v expects an integer, got ''"},
      {"99999999999999999999", "int", "flag --v expects an integer"},
      {"1.5.2", "double", "flag --v expects a number, got '1.5.2'"},
      {"-3", "uint", "flag --v expects a non-negative integer, got '-3'"},
      {" 5", "uint", "non-negative integer, got ' 5'"},
      {"abc", "uint", "non-negative integer, got 'abc'"},
      {"18446744073709551616", "uint", "non-negative integer"},  // 2^64
  };
  for (const auto& c : cases) {
    const ParsedArgs p = parse_args({"--v", c.value}, {"--v"});
    const std::string msg = config_error([&] {
      if (c.get == "int") p.get_int("--v", 0);
      if (c.get == "double") p.get_double("--v", 0);
      if (c.get == "uint") p.get_uint("--v", 0);
    });
    EXPECT_TRUE(contains(msg, c.expected)) << c.value << ": " << msg;
  }
}

// Random command lines built from a known intent; the parser must recover the intent exactly.
TEST(Args, RandomCommandLinesRoundTrip) {
  const Strings value_flags = {"--out", "--seed", "--dtype"};
  const Strings repeatable = {"--set", "--input"};
  const Strings bools = {"--json", "--verbose"};
  std::mt19937 gen(1234);
  auto pick = [&](const Strings& v) { return v[gen() % v.size()]; };
  auto word = [&] {
    std::string w;
    for (size_t n = 1 + gen() % 6; n > 0; --n) w.push_back("ab=.-1/"[gen() % 7]);
    return w;
  };
  for (int trial = 0; trial < 300; ++trial) {
    Strings args, positional;
    std::map<std::string, Strings> flags;
    for (int item = 0, n = static_cast<int>(gen() % 8); item < n; ++item) {
      const int kind = static_cast<int>(gen() % 4);
      const bool inline_value = gen() % 2 == 0;
      if (kind == 0) {  // positional: never starts with "--", never -h
        std::string p = "p" + word();
        positional.push_back(p);
        args.push_back(p);
      } else if (kind == 3) {
        const std::string f = pick(bools);
        if (flags.count(f)) continue;
        flags[f].push_back("true");
        args.push_back(f);
      } else {
        const std::string f = kind == 1 ? pick(value_flags) : pick(repeatable);
        if (kind == 1 && flags.count(f)) continue;
        const std::string v = word();
        flags[f].push_back(v);
        if (inline_value) {
          args.push_back(f + "=" + v);
        } else {
          args.push_back(f);
          args.push_back(v);
        }
      }
    }
    const ParsedArgs a = parse_args(args, value_flags, bools, repeatable);
    EXPECT_EQ(a.positional, positional) << "trial " << trial;
    EXPECT_EQ(a.flags, flags) << "trial " << trial;
    EXPECT_FALSE(a.help);
  }
}

}  // namespace
}  // namespace condensa

TEST(Args, IntListsTakeCommasSpacesAndBrackets) {
  std::vector<int64_t> v;
  std::string bad;
  EXPECT_TRUE(condensa::parse_int_list("3,4, 4 ,2", &v, &bad));
  EXPECT_EQ(v, (std::vector<int64_t>{3, 4, 4, 2}));
  EXPECT_TRUE(condensa::parse_int_list("[16, -2]", &v, &bad));
  EXPECT_EQ(v, (std::vector<int64_t>{16, -2}));
  EXPECT_TRUE(condensa::parse_int_list("", &v, &bad));
  EXPECT_TRUE(v.empty());
  EXPECT_FALSE(condensa::parse_int_list("3,4x,5", &v, &bad));
  EXPECT_EQ(bad, "4x");
  EXPECT_FALSE(condensa::parse_int_list("1.5", &v, &bad));
  EXPECT_EQ(bad, "1.5");
}
