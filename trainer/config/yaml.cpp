// YAML <-> Config. The section structs list their keys through `visit`; this file walks them
// with three visitors: one that reads a YAML node (and records which keys it used, so that
// unknown keys are reported with a "did you mean"), one that writes YAML, one that lists keys.
#include "trainer/config/yaml.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include "common/error.h"

namespace condensa::trainer {
namespace {

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t sub = prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, sub});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string did_you_mean(const std::string& key, const std::vector<std::string>& known) {
  std::string best;
  size_t best_d = std::numeric_limits<size_t>::max();
  for (const auto& k : known) {
    size_t d = edit_distance(key, k);
    if (d < best_d) best_d = d, best = k;
  }
  if (!best.empty() && best_d <= std::max<size_t>(2, key.size() / 3)) {
    return " (did you mean '" + best + "'?)";
  }
  std::string all;
  for (const auto& k : known) all += (all.empty() ? "" : ", ") + k;
  return " (known keys: " + all + ")";
}

// User text as it goes into a one-line message: control and non-ASCII bytes escaped, long
// text cut (a quoted scalar may span many lines of the file).
std::string printable(const std::string& s) {
  constexpr size_t kMax = 60;
  std::string out;
  size_t i = 0;
  for (; i < s.size() && out.size() < kMax; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c >= 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  if (i < s.size()) out += "...";
  return out;
}

// " at line N" of a node read from a file (nothing for nodes without a position).
std::string at_line(const YAML::Node& n) {
  const YAML::Mark m = n.Mark();
  return m.is_null() ? "" : str(" at line ", m.line + 1);
}

std::string scalar_text(const YAML::Node& n) {
  if (n.IsScalar()) return "'" + printable(n.Scalar()) + "'";
  if (n.IsSequence()) return "a list";
  if (n.IsMap()) return "a mapping";
  return "null";
}

// Reads one section's keys from a YAML mapping.
class Reader {
 public:
  Reader(const YAML::Node& node, std::string prefix) : node_(node), prefix_(std::move(prefix)) {}

  template <class T>
  void operator()(const char* key, T& value, const char* /*doc*/) {
    known_.push_back(key);
    if (!node_ || !node_.IsMap()) return;
    YAML::Node n = node_[key];
    if (!n) return;
    read(std::string(prefix_) + "." + key, n, value);
  }

  // Throws on keys the section does not declare.
  void check_unknown() const {
    if (!node_ || node_.IsNull()) return;
    if (!node_.IsMap()) {
      throw ConfigError(str(prefix_, ": expected a mapping of keys, got ", scalar_text(node_)));
    }
    for (const auto& kv : node_) {
      std::string k = kv.first.as<std::string>();
      if (std::find(known_.begin(), known_.end(), k) == known_.end()) {
        throw ConfigError(str("unknown key '", prefix_, ".", printable(k), "'", at_line(kv.first),
                              did_you_mean(k, known_)));
      }
    }
  }

 private:
  static void read(const std::string& path, const YAML::Node& n, int64_t& out) {
    if (!n.IsScalar()) throw ConfigError(str(path, ": expected an integer, got ", scalar_text(n)));
    const std::string& s = n.Scalar();
    try {
      size_t pos = 0;
      long long v = std::stoll(s, &pos, 10);
      if (pos != s.size()) throw std::invalid_argument(s);
      out = v;
    } catch (const std::exception&) {
      throw ConfigError(str(path, ": expected an integer, got '", printable(s), "'"));
    }
  }
  static void read(const std::string& path, const YAML::Node& n, double& out) {
    if (!n.IsScalar()) throw ConfigError(str(path, ": expected a number, got ", scalar_text(n)));
    const std::string& s = n.Scalar();
    try {
      size_t pos = 0;
      double v = std::stod(s, &pos);
      if (pos != s.size() || !std::isfinite(v)) throw std::invalid_argument(s);
      out = v;
    } catch (const std::exception&) {
      throw ConfigError(str(path, ": expected a finite number, got '", printable(s), "'"));
    }
  }
  static void read(const std::string& path, const YAML::Node& n, bool& out) {
    if (!n.IsScalar())
      throw ConfigError(str(path, ": expected true or false, got ", scalar_text(n)));
    const std::string& s = n.Scalar();
    if (s == "true" || s == "True" || s == "yes" || s == "on" || s == "1") {
      out = true;
    } else if (s == "false" || s == "False" || s == "no" || s == "off" || s == "0") {
      out = false;
    } else {
      throw ConfigError(str(path, ": expected true or false, got '", printable(s), "'"));
    }
  }
  static void read(const std::string& path, const YAML::Node& n, std::string& out) {
    if (n.IsNull()) {
      out.clear();
      return;
    }
    if (!n.IsScalar()) throw ConfigError(str(path, ": expected a string, got ", scalar_text(n)));
    out = n.Scalar();
  }

  YAML::Node node_;
  std::string prefix_;
  std::vector<std::string> known_;
};

class SectionReader {
 public:
  explicit SectionReader(const YAML::Node& root) : root_(root) {}
  template <class S>
  void section(const char* name, S& s) {
    sections_.push_back(name);
    Reader r(root_[name], name);
    s.visit(r);
    r.check_unknown();
  }
  void check_unknown() const {
    for (const auto& kv : root_) {
      std::string k = kv.first.as<std::string>();
      if (std::find(sections_.begin(), sections_.end(), k) == sections_.end()) {
        throw ConfigError(str("unknown section '", printable(k), "'", at_line(kv.first),
                              did_you_mean(k, sections_)));
      }
    }
  }

 private:
  YAML::Node root_;
  std::vector<std::string> sections_;
};

class Writer {
 public:
  explicit Writer(YAML::Emitter& out) : out_(out) {}
  template <class S>
  void section(const char* name, S& s) {
    out_ << YAML::Key << name << YAML::Value << YAML::BeginMap;
    s.visit(*this);
    out_ << YAML::EndMap;
  }
  void operator()(const char* key, int64_t& v, const char*) {
    out_ << YAML::Key << key << YAML::Value << v;
  }
  void operator()(const char* key, bool& v, const char*) {
    out_ << YAML::Key << key << YAML::Value << (v ? "true" : "false");
  }
  void operator()(const char* key, double& v, const char*) {
    std::ostringstream os;
    os.precision(17);
    os << v;
    std::string s = os.str();
    if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
    out_ << YAML::Key << key << YAML::Value << s;
  }
  void operator()(const char* key, std::string& v, const char*) {
    out_ << YAML::Key << key << YAML::Value << YAML::DoubleQuoted << v;
  }

 private:
  YAML::Emitter& out_;
};

// The 1-based line of a node, for messages.
int line_of(const YAML::Node& n) { return n.Mark().line + 1; }

// Keys of one mapping: plain scalars, each once. yaml-cpp keeps every entry of a mapping with a
// repeated key and its `node[key]` returns the first, while most YAML tools take the last: a
// repeated key (or section) is an error naming both lines, never a silent choice.
void check_keys(const YAML::Node& map, const std::string& prefix, const std::string& source) {
  std::vector<std::pair<std::string, int>> seen;
  for (const auto& kv : map) {
    const YAML::Node& key = kv.first;
    const std::string where = str(source, ": line ", line_of(key), ": ");
    if (!key.IsScalar()) {
      throw ConfigError(str(where, "a key ", prefix.empty() ? "at the top level" : "in " + prefix,
                            " is ", scalar_text(key), "; keys must be plain names"));
    }
    const std::string path = prefix.empty() ? key.Scalar() : prefix + "." + key.Scalar();
    for (const auto& [name, line] : seen) {
      if (name == key.Scalar()) {
        throw ConfigError(str(where, "duplicate ", prefix.empty() ? "section" : "key", " '", path,
                              "' (first at line ", line, ")"));
      }
    }
    seen.emplace_back(key.Scalar(), line_of(key));
    if (prefix.empty() && kv.second.IsMap()) check_keys(kv.second, path, source);
  }
}

// Applies "section.key=value" to the YAML tree before the typed parse.
void apply_override(YAML::Node& root, const std::string& text) {
  auto eq = text.find('=');
  if (eq == std::string::npos || eq == 0) {
    throw ConfigError(str("--set '", text, "': expected section.key=value"));
  }
  std::string key = text.substr(0, eq), value = text.substr(eq + 1);
  auto dot = key.find('.');
  if (dot == std::string::npos || dot == 0 || dot + 1 == key.size() ||
      key.find('.', dot + 1) != std::string::npos) {
    throw ConfigError(
        str("--set '", text, "': key '", key, "' must be section.key (e.g. train.steps)"));
  }
  std::string section = key.substr(0, dot), name = key.substr(dot + 1);
  YAML::Node parsed;
  try {
    parsed = YAML::Load(value);
  } catch (const YAML::Exception& e) {
    throw ConfigError(str("--set ", key, ": cannot parse value '", value, "': ", e.msg));
  }
  if (!root[section] || root[section].IsNull()) root[section] = YAML::Node(YAML::NodeType::Map);
  if (!root[section].IsMap())
    throw ConfigError(str("--set ", key, ": section '", section, "' is not a mapping"));
  root[section][name] = parsed;
}

Config parse_root(YAML::Node root,
                  const std::vector<std::string>& overrides,
                  const std::string& source) {
  if (!root || root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  if (!root.IsMap())
    throw ConfigError(str(source, ": expected a mapping of sections at the top level"));
  for (const auto& o : overrides) apply_override(root, o);
  Config c;
  SectionReader reader(root);
  c.visit_sections(reader);
  reader.check_unknown();
  c.validate();
  return c;
}

}  // namespace

Config parse_config_text(const std::string& text,
                         const std::vector<std::string>& overrides,
                         const std::string& source_name) {
  YAML::Node root;
  try {
    std::vector<YAML::Node> docs = YAML::LoadAll(text);
    if (docs.size() > 1) {
      throw ConfigError(str(source_name, ": line ", line_of(docs[1]), ": a second YAML document (",
                            docs.size(), " in all); a config is one document"));
    }
    if (!docs.empty()) root = docs.front();
    if (root.IsDefined() && !root.IsNull() && !root.IsMap()) {
      throw ConfigError(str(source_name, ": line ", line_of(root),
                            ": expected a mapping of sections (run:, model:, train:, ...) at the "
                            "top level, got ",
                            scalar_text(root)));
    }
    if (root.IsMap()) check_keys(root, "", source_name);
    return parse_root(root, overrides, source_name);
  } catch (const YAML::Exception& e) {
    // Includes yaml-cpp's conversion errors, so none escapes as "bad conversion".
    throw ConfigError(str(source_name, ": invalid YAML at line ", e.mark.line + 1, ", column ",
                          e.mark.column + 1, ": ", e.msg));
  }
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (std::filesystem::is_directory(status)) {
    throw ConfigError(str("config '", path, "' is a directory, not a YAML file"));
  }
  std::ifstream in(path);
  if (!in || !std::filesystem::is_regular_file(status)) {
    throw ConfigError(str("cannot read config file '", path, "'"));
  }
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  // An empty file (or one of comments only) would train the built-in defaults into
  // runs/default: almost always a wrong path or an unsaved file.
  bool empty = false;
  try {
    const YAML::Node root = YAML::Load(text);
    empty = !root.IsDefined() || root.IsNull();
  } catch (const YAML::Exception&) {
    // Not empty; parse_config_text reports the error with its line.
  }
  if (empty) {
    throw ConfigError(str("config file '", path,
                          "' is empty (no sections); write at least one section, e.g. start from "
                          "configs/tiny.yaml"));
  }
  return parse_config_text(text, overrides, path);
}

std::string config_to_yaml(const Config& config) {
  Config copy = config;
  YAML::Emitter out;
  out << YAML::BeginMap;
  Writer w(out);
  copy.visit_sections(w);
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

namespace {
class MarkdownLister {
 public:
  explicit MarkdownLister(std::ostringstream& os) : os_(os) {}
  template <class S>
  void section(const char* name, S& s) {
    section_ = name;
    os_ << "\n### `" << name << "`\n\n| key | default | meaning |\n|---|---|---|\n";
    s.visit(*this);
  }
  template <class T>
  void operator()(const char* key, T& v, const char* doc) {
    os_ << "| `" << section_ << "." << key << "` | `" << format(v) << "` | " << doc << " |\n";
  }

 private:
  static std::string format(const std::string& v) { return "\"" + v + "\""; }
  static std::string format(bool v) { return v ? "true" : "false"; }
  static std::string format(int64_t v) { return std::to_string(v); }
  static std::string format(double v) {
    std::ostringstream os;
    os << v;
    return os.str();
  }
  std::ostringstream& os_;
  std::string section_;
};
}  // namespace

std::string config_reference_markdown() {
  std::ostringstream os;
  Config c;
  MarkdownLister l(os);
  c.visit_sections(l);
  return os.str();
}

}  // namespace condensa::trainer
