// condensa: one binary, several subcommands. main() is the only place that turns exceptions
// into messages and exit codes: 2 for configuration errors, 1 for everything else.
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "common/error.h"
#include "trainer/cli/commands.h"

namespace {

struct Command {
  const char* name;
  int (*run)(const std::vector<std::string>&);
  const char* summary;
};

const Command kCommands[] = {
    {"train", condensa::trainer::train_command, "train a model from a YAML config"},
    {"data", condensa::data::data_command, "prepare token shards from text"},
    {"eval", condensa::trainer::eval_command, "mean loss and perplexity of a checkpoint"},
    {"generate", condensa::trainer::generate_command, "sample text from a checkpoint"},
    {"export", condensa::trainer::export_command, "write a Hugging Face DeepseekV3 directory"},
    {"import", condensa::trainer::import_command,
     "make a checkpoint from a Hugging Face directory"},
    {"plan", condensa::trainer::plan_command, "parameter counts, memory, communication, time and cost of a layout"},
    {"bench", condensa::trainer::bench_command, "micro-benchmarks (matmul, alltoall, moe)"},
    {"report", condensa::trainer::report_command, "an HTML page of a run's curves and load"},
};

void print_usage() {
  std::printf("usage: condensa <command> [args...]\n\ncommands:\n");
  for (const auto& c : kCommands) std::printf("  %-9s %s\n", c.name, c.summary);
  std::printf("\n`condensa <command> --help` describes each command.\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    print_usage();
    return argc < 2 ? 2 : 0;
  }
  std::string name = argv[1];
  std::vector<std::string> args(argv + 2, argv + argc);
  for (const auto& c : kCommands) {
    if (name != c.name) continue;
    try {
      return c.run(args);
    } catch (const condensa::ConfigError& e) {
      std::fprintf(stderr, "condensa %s: error: %s\n", c.name, e.what());
      return 2;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "condensa %s: error: %s\n", c.name, e.what());
      return 1;
    }
  }
  std::fprintf(stderr, "condensa: unknown command '%s'\n\n", name.c_str());
  print_usage();
  return 2;
}
