// The `condensa` subcommands. Each takes its arguments (after the subcommand name) and returns
// the process exit code; each prints its own --help. Errors are thrown as condensa::Error and
// turned into messages by main().
#pragma once

#include <string>
#include <vector>

namespace condensa::trainer {

using Args = std::vector<std::string>;

int train_command(const Args& args);
int eval_command(const Args& args);
int generate_command(const Args& args);
int export_command(const Args& args);
int import_command(const Args& args);
int plan_command(const Args& args);
int bench_command(const Args& args);
int report_command(const Args& args);

}  // namespace condensa::trainer

namespace condensa::data {

// `condensa data prepare|inspect|sample`.
int data_command(const std::vector<std::string>& args);

}  // namespace condensa::data
