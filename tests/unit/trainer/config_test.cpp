// Every configuration error names the YAML path and the offending value.
#include "trainer/config/config.h"

#include <gtest/gtest.h>

#include <cctype>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>

#include "common/error.h"
#include "parallel/mesh.h"
#include "tests/support/test_util.h"

using condensa::ConfigError;
using namespace condensa::trainer;

namespace {

// Parses `yaml` with `overrides` and, when `world` > 0, validates it for that world size;
// returns the ConfigError message ("" when it passed).
std::string error_of(const std::string& yaml,
                     std::vector<std::string> overrides = {},
                     int64_t world = 0) {
  try {
    Config c = parse_config_text(yaml, overrides, "test.yaml");
    if (world > 0) c.validate_for_world(world);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

struct Case {
  const char* name;
  const char* yaml;
  std::vector<std::string> overrides;
  std::vector<std::string> expected;  // substrings of the message
  int64_t world = 0;                  // > 0: a rule of validate_for_world(world)
};

// gtest prints a failing case by its name, not its bytes.
void PrintTo(const Case& c, std::ostream* os) { *os << '"' << c.name << '"'; }

// "ep divides experts" -> "ep_divides_experts": the case's name, readable in test output.
std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  std::string name = info.param.name;
  for (char& ch : name) {
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  }
  return name;
}

class ConfigErrors : public ::testing::TestWithParam<Case> {};

TEST_P(ConfigErrors, MessageNamesKeyAndValue) {
  const Case& c = GetParam();
  if (c.world > 0) {
    ASSERT_EQ(error_of(c.yaml, c.overrides), "") << c.name << ": only the world rule may fail";
  }
  auto msg = error_of(c.yaml, c.overrides, c.world);
  ASSERT_FALSE(msg.empty()) << c.name << ": expected an error";
  for (const auto& s : c.expected)
    EXPECT_NE(msg.find(s), std::string::npos) << c.name << ": '" << msg << "' lacks '" << s << "'";
}

const Case kCases[] = {
    {"unknown key suggests", "train: {stpes: 3}", {}, {"train.stpes", "did you mean 'steps'"}},
    {"unknown section",
     "trian: {steps: 3}",
     {},
     {"unknown section 'trian'", "did you mean 'train'"}},
    {"wrong type int", "train: {steps: abc}", {}, {"train.steps", "expected an integer", "'abc'"}},
    {"float for int", "train: {steps: 1.5}", {}, {"train.steps", "'1.5'"}},
    {"wrong type number", "optim: {lr: fast}", {}, {"optim.lr", "'fast'"}},
    {"wrong type bool",
     "model: {router_bias: maybe}",
     {},
     {"model.router_bias", "true or false", "'maybe'"}},
    {"mapping for scalar", "train: {steps: {a: 1}}", {}, {"train.steps", "mapping"}},
    {"section not a map", "train: 5", {}, {"train", "mapping"}},
    {"negative steps", "train: {steps: 0}", {}, {"train.steps = 0", "must be in [1, "}},
    {"top_k > experts",
     "model: {num_routed_experts: 4, top_k: 5}",
     {},
     {"model.top_k = 5", "num_routed_experts (4)"}},
    {"bad enum", "model: {scoring: relu}", {}, {"model.scoring", "'relu'", "sigmoid | softmax"}},
    {"bad data source", "data: {source: web}", {}, {"data.source", "'web'", "synthetic | tokens"}},
    {"tokens without path", "data: {source: tokens}", {}, {"data.path", "data.source = tokens"}},
    {"groups must divide",
     "model: {num_routed_experts: 8, num_groups: 3}",
     {},
     {"model.num_groups = 3", "(8)"}},
    {"topk_groups range", "model: {num_groups: 2, topk_groups: 3}", {}, {"model.topk_groups = 3"}},
    {"group capacity",
     "model: {num_routed_experts: 8, num_groups: 4, topk_groups: 1, top_k: 3}",
     {},
     {"model.topk_groups", "(2)", "model.top_k (3)"}},
    {"min_lr above lr", "optim: {lr: 1.0e-3, min_lr: 1.0e-2}", {}, {"optim.min_lr", "optim.lr"}},
    {"zero stage", "parallel: {zero_stage: 3}", {}, {"parallel.zero_stage = 3", "0 or 1"}},
    {"ep divides experts",
     "parallel: {expert_parallel: 3}",
     {},
     {"parallel.expert_parallel (3) must divide model.num_routed_experts (8)"}},
    {"pp at least one",
     "parallel: {pipeline_parallel: 0}",
     {},
     {"parallel.pipeline_parallel = 0", "must be in [1, "}},
    {"ep at least one",
     "parallel: {expert_parallel: 0}",
     {},
     {"parallel.expert_parallel = 0", "must be in [1, "}},
    {"ranks_per_node not negative",
     "parallel: {ranks_per_node: -1}",
     {},
     {"parallel.ranks_per_node = -1", "must be in [0, "}},
    {"pp divides world",
     "parallel: {pipeline_parallel: 3}",
     {},
     {"parallel.pipeline_parallel (3) must divide the world size (4)"},
     4},
    {"ep divides dp",
     "parallel: {expert_parallel: 8}",
     {},
     {"parallel.expert_parallel (8) must divide the data-parallel size (4) = world (4) / "
      "pipeline_parallel (1)"},
     4},
    {"ep divides dp after pp",
     "parallel: {pipeline_parallel: 2, expert_parallel: 8}",
     {},
     {"parallel.expert_parallel (8) must divide the data-parallel size (4) = world (8) / "
      "pipeline_parallel (2)"},
     8},
    {"ranks_per_node divides world",
     "parallel: {ranks_per_node: 3}\ntrain: {global_batch_size: 8, micro_batch_size: 2}",
     {},
     {"parallel.ranks_per_node (3) must divide the world size (4)"},
     4},
    {"batch splits over dp",
     "train: {global_batch_size: 8, micro_batch_size: 4}",
     {},
     {"train.global_batch_size (8) must be divisible by train.micro_batch_size (4) x "
      "data-parallel size (4) = 16"},
     4},
    {"vocab too small", "model: {vocab_size: 100}", {}, {"model.vocab_size (100)", "259"}},
    {"seq_len too long",
     "model: {max_seq_len: 16}\ntrain: {seq_len: 32}",
     {},
     {"train.seq_len (32)", "model.max_seq_len (16)"}},
    {"recompute enum", "model: {recompute: some}", {}, {"model.recompute", "'some'"}},
    {"cpu bf16 products enum",
     "model: {cpu_bf16_products: fast}",
     {},
     {"model.cpu_bf16_products", "'fast'", "auto | native | widened"}},
    {"rope dims even", "model: {qk_rope_head_dim: 3}", {}, {"model.qk_rope_head_dim = 3", "even"}},
    {"dense layers range",
     "model: {num_layers: 2, num_dense_layers: 3}",
     {},
     {"model.num_dense_layers = 3"}},
    {"set unknown key", "{}", {"train.setps=3"}, {"train.setps", "did you mean 'steps'"}},
    {"set bad syntax", "{}", {"train.steps"}, {"--set 'train.steps'", "section.key=value"}},
    {"set no section", "{}", {"steps=3"}, {"'steps'", "section.key"}},
    {"set wrong type", "{}", {"train.steps=many"}, {"train.steps", "'many'"}},
    {"invalid yaml", "train: [1, 2", {}, {"test.yaml", "invalid YAML", "line"}},
    {"log every", "log: {every: 0}", {}, {"log.every = 0"}},
    {"dtype", "train: {dtype: fp8}", {}, {"train.dtype", "'fp8'", "fp32 | bf16"}},
    // Strict YAML: repeated keys and sections, keys that are not names, several documents.
    {"duplicate key",
     "train:\n  steps: 5\n  seq_len: 16\n  steps: 7\n",
     {},
     {"test.yaml: line 4: duplicate key 'train.steps' (first at line 2)"}},
    {"duplicate section",
     "train: {steps: 5}\nlog: {every: 1}\ntrain: {stpes: 7}\n",
     {},
     {"test.yaml: line 3: duplicate section 'train' (first at line 1)"}},
    {"list as key",
     "train:\n  ? [a, b]\n  : 1\n",
     {},
     {"test.yaml: line 2: a key in train is a list; keys must be plain names"}},
    {"mapping as section name",
     "train: {steps: 5}\n{x: 1}: 2\n",
     {},
     {"test.yaml: line 2: a key at the top level is a mapping"}},
    {"second document",
     "train: {steps: 5}\n---\ntrain: {steps: 6}\n",
     {},
     {"test.yaml: line 3: a second YAML document (2 in all)"}},
    // Bounds: the absurd values of the issue, each refused by its key before any allocation.
    {"threads bound", "run: {threads: 1000000}", {}, {"run.threads = 1000000", "[0, 1024]"}},
    {"global batch bound",
     "train: {global_batch_size: 4611686018427387904}",
     {},
     {"train.global_batch_size = 4611686018427387904", "[1, 16777216]"}},
    {"micro batch above global",
     "train: {global_batch_size: 8, micro_batch_size: 16}",
     {},
     {"train.micro_batch_size = 16", "at most train.global_batch_size"}},
    {"eval batches bound",
     "train: {eval_batches: 1000000000000}",
     {},
     {"train.eval_batches = 1000000000000", "[1, 1000000]"}},
    {"vocab bound",
     "model: {vocab_size: 1099511627776}",
     {},
     {"model.vocab_size = 1099511627776", "[2, 2147483647]"}},
    {"hidden bound", "model: {hidden_size: 16777216}", {}, {"model.hidden_size = 16777216"}},
    {"max_seq_len bound",
     "model: {max_seq_len: 2147483648}",
     {},
     {"model.max_seq_len = 2147483648"}},
    {"heads bound", "model: {num_heads: 100000}", {}, {"model.num_heads = 100000", "[1, 16384]"}},
    {"intermediate bound",
     "model: {intermediate_size: 9223372036854775807}",
     {},
     {"model.intermediate_size = 9223372036854775807"}},
    {"timeout bound", "parallel: {timeout_s: 1e300}", {}, {"parallel.timeout_s", "604800"}},
    {"keep bound", "checkpoint: {keep: 10000000000}", {}, {"checkpoint.keep = 10000000000"}},
    {"bias until step",
     "model: {bias_update_until_step: -2}",
     {},
     {"model.bias_update_until_step = -2"}},
    {"capacity above experts",
     "model: {capacity_factor: 1e300}",
     {},
     {"model.capacity_factor", "model.num_routed_experts (8)"}},
    // YaRN keys, checked whatever rope_factor is: out of range they make NaN RoPE tables.
    {"yarn betas zero",
     "model: {rope_factor: 40, rope_beta_fast: 0, rope_beta_slow: 0}",
     {},
     {"model.rope_beta_slow = 0", "must be > 0"}},
    {"yarn beta order",
     "model: {rope_beta_fast: 1, rope_beta_slow: 2}",
     {},
     {"model.rope_beta_fast = 1", "must be in (model.rope_beta_slow (2), "}},
    {"yarn original context",
     "model: {rope_factor: 40, rope_original_max_seq_len: -4096}",
     {},
     {"model.rope_original_max_seq_len = -4096"}},
    {"yarn mscale", "model: {rope_mscale_all_dim: -1}", {}, {"model.rope_mscale_all_dim = -1"}},
    {"rope theta", "model: {rope_theta: 1}", {}, {"model.rope_theta = 1", "must be in (1, "}},
    {"seq_len plus mtp",
     "model: {max_seq_len: 128, mtp_depth: 1}\ntrain: {seq_len: 128}",
     {},
     {"train.seq_len (128) + model.mtp_depth (1) = 129 exceeds model.max_seq_len (128)"}},
    // Pipeline parallelism.
    {"pipeline schedule name",
     "parallel: {pipeline_schedule: gpipe}",
     {},
     {"parallel.pipeline_schedule", "'gpipe'"}},
    {"virtual stages without interleaved",
     "parallel: {virtual_stages: 2}",
     {},
     {"parallel.virtual_stages (2)", "interleaved only", "'1f1b'"}},
    {"pipeline layers not counts",
     "parallel: {pipeline_layers: '3,x'}",
     {},
     {"parallel.pipeline_layers ('3,x')", "'x' is not a layer count"}},
    {"pipeline layers without pipeline",
     "model: {num_layers: 4}\nparallel: {pipeline_layers: '2,2'}",
     {},
     {"parallel.pipeline_layers ('2,2') is set but parallel.pipeline_parallel is 1"},
     1},
    {"too few micro-batches for 1f1b",
     "model: {num_layers: 4}\nparallel: {pipeline_parallel: 4}\n"
     "train: {global_batch_size: 4, micro_batch_size: 2}",
     {},
     {"parallel.pipeline_schedule 1f1b", "(2) >= parallel.pipeline_parallel (4)"},
     4},
    {"too few micro-batches for dualpipe",
     "model: {num_layers: 4}\nparallel: {pipeline_parallel: 2, pipeline_schedule: dualpipe}\n"
     "train: {global_batch_size: 4, micro_batch_size: 2}",
     {},
     {"parallel.pipeline_schedule dualpipe", "(2)", ">= 2 x parallel.pipeline_parallel"},
     2},
    {"pipeline layers do not sum",
     "model: {num_layers: 4}\nparallel: {pipeline_parallel: 2, pipeline_layers: '1,2'}\n"
     "train: {global_batch_size: 8, micro_batch_size: 2}",
     {},
     {"parallel.pipeline_layers sums to 3", "model.num_layers is 4"},
     2},
    {"more stages than layers",
     "model: {num_layers: 2}\nparallel: {pipeline_parallel: 4}\n"
     "train: {global_batch_size: 8, micro_batch_size: 2}",
     {},
     {"model.num_layers (2)"},
     4},
};

INSTANTIATE_TEST_SUITE_P(All, ConfigErrors, ::testing::ValuesIn(kCases), case_name);

}  // namespace

// A quoted scalar that runs to the end of the file, or bytes that are not text, still make a
// one-line message: the user's text is escaped and cut, and the line of the key is named.
TEST(Config, UserTextInMessagesStaysOnOneLine) {
  const std::string unterminated =
      error_of("run:\n  seed: 1\n'unterminated\ntrain:\n  steps: 2\n\n\n");
  EXPECT_NE(unterminated.find("unknown section 'unterminated train: steps: 2\\n"),
            std::string::npos)
      << unterminated;
  EXPECT_NE(unterminated.find("at line 3"), std::string::npos) << unterminated;
  EXPECT_EQ(unterminated.find('\n'), std::string::npos) << unterminated;

  const std::string bytes = error_of("train:\n  steps: \"\\t\xe9\xff\"\n");
  EXPECT_NE(bytes.find("train.steps: expected an integer, got '\\t\\xe9\\xff'"), std::string::npos)
      << bytes;

  const std::string long_key = error_of("run:\n  " + std::string(200, 'k') + ": 1\n");
  EXPECT_NE(long_key.find("unknown key 'run." + std::string(60, 'k') + "...' at line 2"),
            std::string::npos)
      << long_key;
}

TEST(Config, DefaultsParseAndOverridesApplyInOrder) {
  auto c = parse_config_text("train: {steps: 7}",
                             {"train.steps=9", "optim.lr=0.5", "optim.lr=0.25", "run.dir=x"});
  EXPECT_EQ(c.train.steps, 9);
  EXPECT_DOUBLE_EQ(c.optim.lr, 0.25);
  EXPECT_EQ(c.run.dir, "x");
  EXPECT_EQ(c.model.num_routed_experts, 8);
}

TEST(Config, ResolvedYamlRoundTripsExactly) {
  auto c = parse_config_text("model: {route_scale: 2.5, init_std: 0.006}\ntrain: {steps: 11}",
                             {"run.dir=a b"});
  auto text = config_to_yaml(c);
  auto c2 = parse_config_text(text);
  EXPECT_EQ(config_to_yaml(c2), text);
  EXPECT_DOUBLE_EQ(c2.model.init_std, 0.006);
  EXPECT_EQ(c2.run.dir, "a b");
  EXPECT_EQ(c2.train.steps, 11);
}

TEST(Config, WorldDependentChecksNameEveryOperand) {
  auto c = parse_config_text(
      "train: {global_batch_size: 8, micro_batch_size: 2}\nparallel: {expert_parallel: 2}");
  c.validate_for_world(4);  // dp 4: 8 = 2 x 4, fine
  try {
    c.validate_for_world(3);
    FAIL() << "expected an error";
  } catch (const ConfigError& e) {
    EXPECT_NE(
        std::string(e.what()).find("parallel.expert_parallel (2) must divide the data-parallel "
                                   "size (3) = world (3) / pipeline_parallel (1)"),
        std::string::npos)
        << e.what();
  }
  auto c2 = parse_config_text("train: {global_batch_size: 8, micro_batch_size: 4}");
  try {
    c2.validate_for_world(4);
    FAIL() << "expected an error";
  } catch (const ConfigError& e) {
    EXPECT_NE(
        std::string(e.what()).find("train.global_batch_size (8) must be divisible by "
                                   "train.micro_batch_size (4) x data-parallel size (4) = 16"),
        std::string::npos)
        << e.what();
  }
}

TEST(Config, ValidLayoutsPassTheWorldRules) {
  auto c = parse_config_text(
      "train: {global_batch_size: 32, micro_batch_size: 2}\n"
      "parallel: {pipeline_parallel: 2, expert_parallel: 4, ranks_per_node: 8}");
  EXPECT_NO_THROW(c.validate_for_world(16));
  EXPECT_NO_THROW(parse_config_text("{}").validate_for_world(1));
}

TEST(Config, MeshOptionsCarryTheValidatedLayout) {
  auto c =
      parse_config_text("parallel: {pipeline_parallel: 2, expert_parallel: 4, ranks_per_node: 8}");
  const condensa::parallel::MeshOptions o = mesh_options(c);
  EXPECT_EQ(o.pipeline_parallel, 2);
  EXPECT_EQ(o.expert_parallel, 4);
  EXPECT_EQ(o.ranks_per_node, 8);
}

TEST(Config, MissingFileIsNamed) {
  try {
    load_config("/nonexistent/x.yaml");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/x.yaml"), std::string::npos);
  }
}

TEST(Config, DirectoryOrEmptyFileIsRefused) {
  condensa::testing::TempDir dir;
  auto message = [](const std::string& path) -> std::string {
    try {
      load_config(path);
    } catch (const ConfigError& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(message(dir.str()).find("config '" + dir.str() + "' is a directory"), std::string::npos)
      << message(dir.str());
  for (const char* text : {"", "# only a comment\n\n", "~\n"}) {
    const std::string file = (dir.path() / "empty.yaml").string();
    std::ofstream(file) << text;
    EXPECT_NE(message(file).find("config file '" + file + "' is empty"), std::string::npos)
        << "text '" << text << "': " << message(file);
  }
}

// Every training config the repository ships: configs/*.yaml (not the hardware profiles under
// configs/hardware/) and the benchmark configs in tests/bench/.
TEST(Config, ShippedConfigsParse) {
  std::set<std::string> found;
  for (const char* dir : {"configs", "tests/bench"}) {
    for (const auto& e : std::filesystem::directory_iterator(condensa::testing::source_path(dir))) {
      if (e.path().extension() != ".yaml") continue;
      found.insert(std::string(dir) + "/" + e.path().filename().string());
      EXPECT_NO_THROW(load_config(e.path().string())) << e.path();
    }
  }
  for (const char* f :
       {"configs/tiny.yaml", "configs/quickstart.yaml", "configs/deepseek-v3-671b.yaml",
        "configs/deepseek-v2-lite-16b.yaml", "configs/deepseek-v3-mini.yaml",
        "tests/bench/d512.yaml", "tests/bench/load-balance.yaml"}) {
    EXPECT_TRUE(found.count(f)) << f << " not found";
  }
}

TEST(Config, EveryKeyIsDocumented) {
  std::ifstream in(condensa::testing::source_path("docs/config.md"));
  ASSERT_TRUE(in.good()) << "docs/config.md missing";
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string doc = ss.str();
  // Keys listed by the schema itself.
  std::vector<std::string> keys;
  const std::string ref = config_reference_markdown();
  const std::regex key_re("\\| `([a-z_]+\\.[a-z_0-9]+)` \\|");
  for (auto it = std::sregex_iterator(ref.begin(), ref.end(), key_re); it != std::sregex_iterator();
       ++it) {
    keys.push_back((*it)[1]);
  }
  EXPECT_GT(keys.size(), 60u);
  for (const auto& k : keys)
    EXPECT_NE(doc.find("`" + k + "`"), std::string::npos) << k << " is not in docs/config.md";
}
