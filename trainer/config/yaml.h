// YAML <-> Config: reading a file or text, `--set section.key=value` overrides, the resolved
// config as YAML, and the key reference of docs/config.md.
//
// Loading order: YAML file -> `--set` overrides -> typed parse (unknown keys and wrong types are
// errors) -> Config::validate(). Every error is a ConfigError whose message names the YAML
// path and the values.
#pragma once

#include <string>
#include <vector>

#include "trainer/config/schema.h"

namespace condensa::trainer {

// Reads a YAML file and applies `--set key=value` overrides; validates. Throws ConfigError.
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});
// Parses YAML text (for tests and checkpoints).
Config parse_config_text(const std::string& yaml_text,
                         const std::vector<std::string>& overrides = {},
                         const std::string& source_name = "<config>");
// The resolved config as YAML (every key, defaults included).
std::string config_to_yaml(const Config& config);
// Markdown tables of every key with its default and description (docs/config.md).
std::string config_reference_markdown();

}  // namespace condensa::trainer
