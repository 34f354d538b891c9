// safetensors reader and writer. See safetensors.h for the format and the strictness rules.
#include "trainer/checkpoint/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "common/durable_file.h"
#include "common/error.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors I/O copies tensor bytes verbatim and needs a little-endian host"
#endif

namespace condensa::trainer {
namespace {

using OrderedJson = nlohmann::ordered_json;

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the reference reader's limit
constexpr const char* kMetadataKey = "__metadata__";

struct DtypeEntry {
  const char* name;
  torch::ScalarType type;
};
constexpr DtypeEntry kDtypes[] = {
    {"F64", torch::kDouble},    {"F32", torch::kFloat}, {"F16", torch::kHalf},
    {"BF16", torch::kBFloat16}, {"I64", torch::kLong},  {"I32", torch::kInt},
    {"I16", torch::kShort},     {"I8", torch::kChar},   {"U8", torch::kByte},
    {"BOOL", torch::kBool},
};

std::string supported_dtype_list() {
  std::string out;
  for (const auto& d : kDtypes) out += (out.empty() ? "" : ", ") + std::string(d.name);
  return out;
}

// A parsed, validated header: entries in data-offset order.
struct Header {
  std::vector<std::pair<std::string, TensorInfo>> entries;
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0;  // absolute file offset of the data section
};

uint64_t file_size_or_throw(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    throw CheckpointError(str("safetensors file ", path, ": cannot open: ", std::strerror(errno)));
  }
  if (!S_ISREG(st.st_mode))
    throw CheckpointError(str("safetensors file ", path, ": not a regular file"));
  return static_cast<uint64_t>(st.st_size);
}

class ReadFd {
 public:
  explicit ReadFd(const std::string& path) : path_(path), fd_(::open(path.c_str(), O_RDONLY)) {
    if (fd_ < 0) {
      throw CheckpointError(
          str("safetensors file ", path, ": cannot open: ", std::strerror(errno)));
    }
  }
  ~ReadFd() { ::close(fd_); }
  ReadFd(const ReadFd&) = delete;
  ReadFd& operator=(const ReadFd&) = delete;

  // Reads exactly num_bytes at `offset` or throws.
  void read_at(uint64_t offset, void* dst, uint64_t num_bytes) const {
    auto* p = static_cast<char*>(dst);
    while (num_bytes > 0) {
      size_t chunk = static_cast<size_t>(std::min<uint64_t>(num_bytes, 1ULL << 30));
      ssize_t n = ::pread(fd_, p, chunk, static_cast<off_t>(offset));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0)
        throw CheckpointError(
            str("safetensors file ", path_, ": read failed: ", std::strerror(errno)));
      if (n == 0) {
        throw CheckpointError(str("safetensors file ", path_,
                                  ": data truncated: unexpected end of file at byte ", offset));
      }
      p += n;
      offset += static_cast<uint64_t>(n);
      num_bytes -= static_cast<uint64_t>(n);
    }
  }

 private:
  std::string path_;
  int fd_;
};

// The shape of one entry: a JSON array of non-negative integers.
std::vector<int64_t> parse_shape(const std::string& where, const OrderedJson& j) {
  if (!j.is_array())
    throw CheckpointError(str(where, ": \"shape\" must be an array, got ", j.dump()));
  std::vector<int64_t> shape;
  for (const auto& d : j) {
    if (!d.is_number_unsigned() || d.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
      throw CheckpointError(
          str(where, ": \"shape\" must hold non-negative integers, got ", j.dump()));
    }
    shape.push_back(d.get<int64_t>());
  }
  return shape;
}

TensorInfo parse_entry(const std::string& where, const OrderedJson& j) {
  if (!j.is_object())
    throw CheckpointError(str(where, ": entry must be an object, got ", j.dump()));
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    if (!j.contains(key)) throw CheckpointError(str(where, ": entry has no \"", key, "\""));
  }
  TensorInfo info;
  if (!j["dtype"].is_string()) throw CheckpointError(str(where, ": \"dtype\" must be a string"));
  try {
    info.dtype = safetensors_scalar_type(j["dtype"].get<std::string>());
  } catch (const CheckpointError& e) {
    throw CheckpointError(str(where, ": ", e.what()));
  }
  info.shape = parse_shape(where, j["shape"]);
  const auto& off = j["data_offsets"];
  if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
      !off[1].is_number_unsigned()) {
    throw CheckpointError(
        str(where, ": \"data_offsets\" must be two non-negative integers, got ", off.dump()));
  }
  info.data_begin = off[0].get<uint64_t>();
  info.data_end = off[1].get<uint64_t>();
  if (info.data_begin > info.data_end) {
    throw CheckpointError(str(where, ": data_offsets [", info.data_begin, ", ", info.data_end,
                              "] out of range: begin is past end"));
  }
  // NOTE: numel x itemsize is computed with overflow checks; a hostile shape must not wrap.
  uint64_t num_bytes = c10::elementSize(info.dtype);
  for (int64_t d : info.shape) {
    if (__builtin_mul_overflow(num_bytes, static_cast<uint64_t>(d), &num_bytes)) {
      throw CheckpointError(str(where, ": shape ", j["shape"].dump(), " is too large"));
    }
  }
  if (info.data_end - info.data_begin != num_bytes) {
    throw CheckpointError(str(where, ": data_offsets [", info.data_begin, ", ", info.data_end,
                              "] span ", info.data_end - info.data_begin, " bytes but shape ",
                              j["shape"].dump(), " x ", c10::elementSize(info.dtype), "-byte ",
                              j["dtype"].get<std::string>(), " needs ", num_bytes));
  }
  return info;
}

std::map<std::string, std::string> parse_metadata(const std::string& path, const OrderedJson& j) {
  if (!j.is_object())
    throw CheckpointError(str("safetensors file ", path, ": __metadata__ must be an object"));
  std::map<std::string, std::string> out;
  for (const auto& [key, value] : j.items()) {
    if (!value.is_string()) {
      throw CheckpointError(str("safetensors file ", path, ": __metadata__[\"", key,
                                "\"] must be a string, got ", value.dump()));
    }
    out[key] = value.get<std::string>();
  }
  return out;
}

// Sorted by offset, the tensors must tile [0, data_size) exactly.
void check_tiling(const std::string& path, const Header& h, uint64_t data_size) {
  uint64_t expected_begin = 0;
  const std::string* prev = nullptr;
  for (const auto& [name, info] : h.entries) {
    if (info.data_begin < expected_begin) {
      throw CheckpointError(str("safetensors file ", path, ": tensor '", name, "' data_offsets [",
                                info.data_begin, ", ", info.data_end, "] overlap tensor '", *prev,
                                "'"));
    }
    if (info.data_begin > expected_begin) {
      throw CheckpointError(str("safetensors file ", path, ": gap of ",
                                info.data_begin - expected_begin, " bytes before tensor '", name,
                                "' (data_offsets begin at ", info.data_begin,
                                ", previous tensor ends at ", expected_begin, ")"));
    }
    expected_begin = info.data_end;
    prev = &name;
  }
  if (expected_begin > data_size) {
    throw CheckpointError(str("safetensors file ", path, ": data truncated: header describes ",
                              expected_begin, " bytes of tensor data but the file holds ",
                              data_size));
  }
  if (expected_begin < data_size) {
    throw CheckpointError(str("safetensors file ", path, ": ", data_size - expected_begin,
                              " trailing bytes after the last tensor"));
  }
}

Header parse_header(const std::string& path, const ReadFd& fd) {
  const uint64_t file_size = file_size_or_throw(path);
  if (file_size < 8) {
    throw CheckpointError(str("safetensors file ", path, ": ", file_size,
                              " bytes is shorter than the 8-byte header length"));
  }
  unsigned char len_bytes[8];
  fd.read_at(0, len_bytes, 8);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];
  if (header_len > file_size - 8) {
    throw CheckpointError(str("safetensors file ", path, ": header length ", header_len,
                              " exceeds the ", file_size - 8, " bytes after the length field"));
  }
  if (header_len > kMaxHeaderBytes) {
    throw CheckpointError(str("safetensors file ", path, ": header length ", header_len,
                              " exceeds the limit of ", kMaxHeaderBytes));
  }
  std::string text(header_len, '\0');
  fd.read_at(8, text.data(), header_len);

  OrderedJson j;
  try {
    j = OrderedJson::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw CheckpointError(str("safetensors file ", path, ": invalid JSON header: ", e.what()));
  }
  if (!j.is_object())
    throw CheckpointError(str("safetensors file ", path, ": header is not a JSON object"));

  Header h;
  h.data_start = 8 + header_len;
  for (const auto& [name, value] : j.items()) {
    if (name == kMetadataKey) {
      h.metadata = parse_metadata(path, value);
      continue;
    }
    h.entries.emplace_back(
        name, parse_entry(str("safetensors file ", path, ": tensor '", name, "'"), value));
  }
  std::stable_sort(h.entries.begin(), h.entries.end(), [](const auto& a, const auto& b) {
    return a.second.data_begin < b.second.data_begin;
  });
  check_tiling(path, h, file_size - h.data_start);
  return h;
}

}  // namespace

std::string safetensors_dtype_name(torch::ScalarType dtype) {
  for (const auto& d : kDtypes) {
    if (d.type == dtype) return d.name;
  }
  throw CheckpointError(str("safetensors cannot store dtype ", c10::toString(dtype),
                            " (supported: ", supported_dtype_list(), ")"));
}

torch::ScalarType safetensors_scalar_type(const std::string& name) {
  for (const auto& d : kDtypes) {
    if (name == d.name) return d.type;
  }
  throw CheckpointError(
      str("unknown or unsupported dtype '", name, "' (supported: ", supported_dtype_list(), ")"));
}

void save_safetensors(const std::string& path,
                      const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  // ---- checks ----
  std::set<std::string> seen;
  for (const auto& [name, t] : tensors) {
    CONDENSA_CHECK(!name.empty(), CheckpointError, "save_safetensors ", path,
                   ": empty tensor name");
    CONDENSA_CHECK(name != kMetadataKey, CheckpointError, "save_safetensors ", path,
                   ": '__metadata__' is reserved and cannot name a tensor");
    CONDENSA_CHECK(seen.insert(name).second, CheckpointError, "save_safetensors ", path,
                   ": duplicate tensor name '", name, "'");
    CONDENSA_CHECK(t.defined(), CheckpointError, "save_safetensors ", path, ": tensor '", name,
                   "' is undefined");
    CONDENSA_CHECK(t.layout() == torch::kStrided, CheckpointError, "save_safetensors ", path,
                   ": tensor '", name, "' is not dense (layout ", t.layout(), ")");
  }

  // ---- header ----
  std::vector<torch::Tensor> contiguous;
  contiguous.reserve(tensors.size());
  OrderedJson header = OrderedJson::object();
  if (!metadata.empty()) {
    OrderedJson meta = OrderedJson::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header[kMetadataKey] = std::move(meta);
  }
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    std::string dtype_name;
    try {
      dtype_name = safetensors_dtype_name(t.scalar_type());
    } catch (const CheckpointError& e) {
      throw CheckpointError(str("save_safetensors ", path, ": tensor '", name, "': ", e.what()));
    }
    torch::Tensor c = t.to(torch::kCPU).contiguous();
    const uint64_t num_bytes = c.numel() * c.element_size();
    OrderedJson entry = OrderedJson::object();
    entry["dtype"] = dtype_name;
    entry["shape"] = c.sizes().vec();
    entry["data_offsets"] = {offset, offset + num_bytes};
    header[name] = std::move(entry);
    offset += num_bytes;
    contiguous.push_back(std::move(c));
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {  // e.g. a name that is not valid UTF-8
    throw CheckpointError(str("save_safetensors ", path, ": cannot encode header: ", e.what()));
  }
  text.append((8 - text.size() % 8) % 8, ' ');

  // ---- bytes ----
  unsigned char len_bytes[8];
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<unsigned char>(n >> (8 * i));
  SyncedFileWriter out(path);
  out.write(len_bytes, 8);
  out.write(text.data(), text.size());
  for (const auto& c : contiguous) out.write(c.data_ptr(), c.numel() * c.element_size());
  out.finish();
}

torch::Tensor SafetensorsFile::get(const std::string& name) const {
  for (const auto& [n, t] : tensors) {
    if (n == name) return t;
  }
  throw CheckpointError(str("safetensors file ", path, " has no tensor '", name, "' (it holds ",
                            tensors.size(), " tensors)"));
}

bool SafetensorsFile::contains(const std::string& name) const {
  return std::any_of(tensors.begin(), tensors.end(),
                     [&](const auto& p) { return p.first == name; });
}

SafetensorsFile load_safetensors(const std::string& path) {
  ReadFd fd(path);
  Header h = parse_header(path, fd);
  SafetensorsFile file;
  file.path = path;
  file.metadata = std::move(h.metadata);
  file.tensors.reserve(h.entries.size());
  for (auto& [name, info] : h.entries) {
    torch::Tensor t = torch::empty(info.shape, torch::TensorOptions().dtype(info.dtype));
    fd.read_at(h.data_start + info.data_begin, t.data_ptr(), info.data_end - info.data_begin);
    if (info.dtype == torch::kBool) {
      // NOTE: bytes other than 0 and 1 would be undefined behaviour in a torch bool tensor.
      const auto* b = static_cast<const uint8_t*>(t.data_ptr());
      const bool valid = std::all_of(b, b + t.numel(), [](uint8_t v) { return v <= 1; });
      CONDENSA_CHECK(valid, CheckpointError, "safetensors file ", path, ": BOOL tensor '", name,
                     "' holds a byte other than 0 or 1");
    }
    file.tensors.emplace_back(std::move(name), std::move(t));
  }
  return file;
}

std::map<std::string, TensorInfo> read_safetensors_header(const std::string& path) {
  ReadFd fd(path);
  Header h = parse_header(path, fd);
  std::map<std::string, TensorInfo> out;
  for (auto& [name, info] : h.entries) out.emplace(std::move(name), std::move(info));
  return out;
}

}  // namespace condensa::trainer
