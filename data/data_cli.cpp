#include "data/data_cli.h"

#include "common/error.h"

namespace condensa::data {
int data_command(const std::vector<std::string>&) { throw Error("condensa data is not implemented in this build"); }
}  // namespace condensa::data
