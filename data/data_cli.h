// `condensa data ...`: dataset tools (prepare token shards from text, inspect shards).
#pragma once

#include <string>
#include <vector>

namespace condensa::data {

int data_command(const std::vector<std::string>& args);

}  // namespace condensa::data
