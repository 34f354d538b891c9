// `condensa data`: prepare token shards from text, inspect them, and print synthetic samples.
//
// Key design choice: the CLI is a thin layer over ShardWriter / TokenDataset / SyntheticMixture
// with the strict flag parser every subcommand uses (common/args.h): every flag must be known to
// the subcommand, every value present and only --input repeated, otherwise a ConfigError names
// the flag (main turns it into exit code 2), so a typo never silently produces a different
// dataset.
#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "common/args.h"
#include "common/durable_file.h"
#include "common/error.h"
#include "data/shard.h"
#include "data/synthetic.h"
#include "data/tokenizer.h"
#include "trainer/cli/commands.h"

namespace condensa::data {

namespace fs = std::filesystem;

namespace {

const char* kUsage =
    "usage: condensa data <subcommand> [args...]\n"
    "\n"
    "subcommands:\n"
    "  prepare   tokenize text files into a token shard directory\n"
    "  inspect   print a shard's index and verify its checksum\n"
    "  sample    print documents from the built-in synthetic mixture\n"
    "\n"
    "`condensa data <subcommand> --help` describes each.\n";

const char* kPrepareUsage =
    "usage: condensa data prepare --input <file or dir> [--input ...] --out <dir>\n"
    "                             [--tokenizer byte]\n"
    "\n"
    "Each regular file is one document, wrapped in BOS ... EOS. Directories are walked\n"
    "recursively in sorted path order; empty files are skipped. Writes tokens.bin, docs.bin and\n"
    "index.json into --out, which must not already hold a shard.\n";

const char* kInspectUsage =
    "usage: condensa data inspect <dir>\n"
    "\n"
    "<dir> is a shard directory or a directory of shard directories. Prints each index.json,\n"
    "verifies every file against it (headers, sizes, checksum) and previews the first document.\n";

const char* kSampleUsage =
    "usage: condensa data sample [--seed N] [--count N]\n"
    "\n"
    "Prints --count (default 8) documents of the synthetic mixture for --seed (default 1234),\n"
    "each with its language. Bytes >= 0x80 (the Markov languages) are shown as \\xNN.\n";

void reject_positional(const ParsedArgs& p, const std::string& command) {
  CONDENSA_CHECK(p.positional.empty(), ConfigError, "condensa data ", command,
                 ": unexpected argument '", p.positional.empty() ? "" : p.positional.front(), "'");
}

// Printable form of bytes: ASCII and newlines as is, other bytes as \xNN.
std::string escape_bytes(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\n' || (c >= 0x20 && c < 0x7f)) {
      out.push_back(static_cast<char>(c));
    } else {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    }
  }
  return out;
}

// Regular files of one --input, directories walked recursively in sorted order.
std::vector<fs::path> input_files(const std::string& input) {
  const fs::path p(input);
  CONDENSA_CHECK(fs::exists(p), DataError, "--input ", input, ": no such file or directory");
  if (!fs::is_directory(p)) {
    CONDENSA_CHECK(fs::is_regular_file(p), DataError, "--input ", input,
                   ": not a regular file or directory");
    return {p};
  }
  std::vector<fs::path> files;
  for (const auto& entry : fs::recursive_directory_iterator(p)) {
    if (entry.is_regular_file()) files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  CONDENSA_CHECK(!files.empty(), DataError, "--input ", input, ": directory has no regular files");
  return files;
}

int prepare_command(const std::vector<std::string>& args) {
  ParsedArgs p = parse_args(args, {"--out", "--tokenizer"}, {}, {"--input"});
  if (p.help) {
    std::printf("%s", kPrepareUsage);
    return 0;
  }
  reject_positional(p, "prepare");
  CONDENSA_CHECK(p.has("--input"), ConfigError,
                 "condensa data prepare: missing --input (a text file or directory)");
  const std::string out = p.get("--out");
  CONDENSA_CHECK(!out.empty(), ConfigError,
                 "condensa data prepare: missing --out (the shard directory to write)");
  auto tokenizer = make_tokenizer(p.get("--tokenizer", "byte"));

  std::vector<fs::path> files;
  for (const auto& input : p.get_all("--input")) {
    for (auto& f : input_files(input)) files.push_back(std::move(f));
  }
  // Refused before the shard directory is created: a shard without tokens trains nothing.
  const bool all_empty = std::all_of(files.begin(), files.end(),
                                     [](const fs::path& f) { return fs::file_size(f) == 0; });
  CONDENSA_CHECK(!all_empty, DataError, "condensa data prepare: every input file is empty (",
                 files.size(), files.size() == 1 ? " file" : " files", "); no shard written to ",
                 out);
  ShardWriter writer(out, tokenizer->name(), tokenizer->vocab_size());
  int64_t skipped = 0;
  for (const auto& file : files) {
    std::string text = read_file(file.string());
    if (text.empty()) {
      ++skipped;
      continue;
    }
    std::vector<int32_t> ids = tokenizer->encode(text);
    ids.insert(ids.begin(), tokenizer->bos_id());
    ids.push_back(tokenizer->eos_id());
    writer.add_document(ids);
    writer.add_source(file.string());
  }
  ShardInfo info = writer.finish();
  std::printf("wrote %s: %lld tokens, %lld documents (%lld empty files skipped), dtype %s, %s\n",
              out.c_str(), static_cast<long long>(info.num_tokens),
              static_cast<long long>(info.num_documents), static_cast<long long>(skipped),
              info.dtype.c_str(), format_checksum(info.checksum).c_str());
  return 0;
}

int inspect_command(const std::vector<std::string>& args) {
  ParsedArgs p = parse_args(args, {});
  if (p.help) {
    std::printf("%s", kInspectUsage);
    return 0;
  }
  CONDENSA_CHECK(p.positional.size() == 1, ConfigError,
                 "condensa data inspect: expected one shard directory, got ", p.positional.size(),
                 " arguments");
  TokenDataset ds = TokenDataset::open(p.positional.front(), /*verify_checksum=*/true);
  for (const auto& shard : ds.shards()) {
    nlohmann::json index = shard.info().to_json();
    const auto& sources = shard.info().sources;
    if (sources.size() > 10) {
      index["sources"] = std::vector<std::string>(sources.begin(), sources.begin() + 10);
      index["sources"].push_back(str("... (", sources.size() - 10, " more)"));
    }
    std::printf("shard %s\n%s\nchecksum ok\n", shard.dir().c_str(), index.dump(2).c_str());
  }
  std::printf("total: %zu shard(s), %lld tokens, %lld documents, tokenizer %s, vocab_size %lld\n",
              ds.shards().size(), static_cast<long long>(ds.num_tokens()),
              static_cast<long long>(ds.num_documents()), ds.tokenizer().c_str(),
              static_cast<long long>(ds.vocab_size()));
  const TokenShard& first = ds.shards().front();
  const auto known = tokenizer_names();
  if (first.num_documents() > 0 &&
      std::find(known.begin(), known.end(), ds.tokenizer()) != known.end()) {
    int64_t begin = first.document_start(0);
    int64_t n = std::min<int64_t>(first.document_end(0) - begin, 200);
    std::vector<int64_t> ids64(static_cast<size_t>(n));
    first.copy(begin, n, ids64.data());
    std::vector<int32_t> ids(ids64.begin(), ids64.end());
    std::printf("first document (up to 200 tokens):\n%s\n",
                escape_bytes(make_tokenizer(ds.tokenizer())->decode(ids, true)).c_str());
  }
  return 0;
}

int sample_command(const std::vector<std::string>& args) {
  ParsedArgs p = parse_args(args, {"--seed", "--count"});
  if (p.help) {
    std::printf("%s", kSampleUsage);
    return 0;
  }
  reject_positional(p, "sample");
  const uint64_t seed = p.get_uint("--seed", 1234);
  const uint64_t count = p.get_uint("--count", 8);
  SyntheticMixture mixture(seed);
  ByteTokenizer tokenizer;
  for (uint64_t key = 0; key < count; ++key) {
    Document doc = mixture.generate(key);
    std::printf("--- document %llu: %s (%zu tokens)\n%s\n", static_cast<unsigned long long>(key),
                mixture.language_names()[doc.language].c_str(), doc.tokens.size(),
                escape_bytes(tokenizer.decode(doc.tokens, true)).c_str());
  }
  return 0;
}

}  // namespace

int data_command(const std::vector<std::string>& args) {
  if (args.empty()) {
    throw ConfigError(
        "missing subcommand: expected prepare, inspect or sample (see `condensa data --help`)");
  }
  const std::string& sub = args.front();
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  if (sub == "--help" || sub == "-h") {
    std::printf("%s", kUsage);
    return 0;
  }
  if (sub == "prepare") return prepare_command(rest);
  if (sub == "inspect") return inspect_command(rest);
  if (sub == "sample") return sample_command(rest);
  throw ConfigError(str("unknown data subcommand '", sub, "' (known: prepare, inspect, sample)"));
}

}  // namespace condensa::data
