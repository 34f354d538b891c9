// The safetensors tensor file format, as Hugging Face defines it.
//
// A file is: an 8-byte little-endian unsigned header length N; N bytes of UTF-8 JSON mapping
// each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} plus an optional
// "__metadata__" object of string -> string; then the raw little-endian tensor bytes. Offsets
// are relative to the first byte after the header. The key design choice is to be strict on
// read: the tensors must tile the data section exactly (sorted by offset, no gaps, no overlap,
// no trailing bytes, each extent equal to numel x itemsize), as the reference Rust reader
// demands, so a file we accept is a file every other reader accepts. On write we keep the
// caller's order, pad the header with spaces to a multiple of 8 (so the data is 8-byte
// aligned), and fsync before returning.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace condensa::trainer {

// Ordered (name, tensor) pairs; the order is the order of the tensors in the file.
using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

// One header entry, as stored in the file.
struct TensorInfo {
  torch::ScalarType dtype = torch::kFloat;
  std::vector<int64_t> shape;
  uint64_t data_begin = 0;  // offsets relative to the start of the data section
  uint64_t data_end = 0;
};

// "F32" for torch::kFloat, ...; throws CheckpointError for a dtype safetensors cannot hold.
std::string safetensors_dtype_name(torch::ScalarType dtype);
// torch::kFloat for "F32", ...; throws CheckpointError for an unknown or unsupported name.
torch::ScalarType safetensors_scalar_type(const std::string& name);

// Writes `tensors` (any device, any strides; copied to contiguous CPU memory) to `path`,
// replacing it, and fsyncs the file. Names must be unique, non-empty and not "__metadata__".
void save_safetensors(const std::string& path,
                      const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// A loaded file: owning, contiguous CPU tensors in data-offset order.
struct SafetensorsFile {
  std::string path;
  NamedTensors tensors;
  std::map<std::string, std::string> metadata;

  // The tensor called `name`; throws CheckpointError naming the file and `name` if absent.
  torch::Tensor get(const std::string& name) const;
  bool contains(const std::string& name) const;
};

// Reads and validates a whole file; throws CheckpointError naming the file and the problem.
SafetensorsFile load_safetensors(const std::string& path);

// Reads and validates the header (including that the file is long enough for the data)
// without reading tensor data.
std::map<std::string, TensorInfo> read_safetensors_header(const std::string& path);

}  // namespace condensa::trainer
