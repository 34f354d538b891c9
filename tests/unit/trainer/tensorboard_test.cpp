// TensorBoard event files: CRC-32C against published vectors, TFRecord framing and the Event
// encoding against bytes written out by hand from the protobuf wire format, the expert
// histogram, and event file ordering. TensorBoard itself reads a real run's files in
// tests/e2e/observe_test.cpp.
#include "trainer/tensorboard.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "common/durable_file.h"
#include "tests/support/test_util.h"

namespace condensa::trainer {
namespace {

namespace fs = std::filesystem;

std::string bytes(std::initializer_list<int> b) {
  std::string s;
  for (int x : b) s += static_cast<char>(x);
  return s;
}

// RFC 3720 (iSCSI) appendix B.4 and the common "123456789" check value.
TEST(TensorBoard, Crc32cMatchesPublishedVectors) {
  EXPECT_EQ(crc32c("123456789"), 0xE3069283u);
  EXPECT_EQ(crc32c(std::string(32, '\0')), 0x8A9136AAu);
  EXPECT_EQ(crc32c(std::string(32, '\xff')), 0x62A8AB43u);
  std::string ascending;
  for (int i = 0; i < 32; ++i) ascending += static_cast<char>(i);
  EXPECT_EQ(crc32c(ascending), 0x46DD794Eu);
  // TFRecord's mask: rotate right by 15, add 0xa282ead8.
  EXPECT_EQ(masked_crc32c("123456789"), 0xC78AB0E5u);
  EXPECT_EQ(masked_crc32c(""), 0xA282EAD8u);
}

TEST(TensorBoard, TfRecordFraming) {
  const std::string data = "123456789";
  const std::string rec = tfrecord(data);
  ASSERT_EQ(rec.size(), 8u + 4 + data.size() + 4);
  EXPECT_EQ(rec.substr(0, 8), bytes({9, 0, 0, 0, 0, 0, 0, 0}));  // little-endian length
  EXPECT_EQ(rec.substr(12, data.size()), data);
  EXPECT_EQ(rec.substr(21, 4), bytes({0xE5, 0xB0, 0x8A, 0xC7}));  // masked CRC, little-endian
  const uint32_t len_crc = masked_crc32c(rec.substr(0, 8));
  EXPECT_EQ(rec.substr(8, 4),
            bytes({static_cast<int>(len_crc & 0xff), static_cast<int>((len_crc >> 8) & 0xff),
                   static_cast<int>((len_crc >> 16) & 0xff), static_cast<int>(len_crc >> 24)}));
}

// Event{wall_time=1.5, step=3, summary{value{tag="a", simple_value=2}}}, field by field.
TEST(TensorBoard, ScalarEventWireFormat) {
  const std::string want = bytes({0x09, 0,    0,   0, 0,   0, 0, 0xF8, 0x3F,  // 1: double 1.5
                                  0x10, 0x03,                                 // 2: varint 3
                                  0x2A, 0x0A,                  // 5: Summary, 10 bytes
                                  0x0A, 0x08,                  //   1: Value, 8 bytes
                                  0x0A, 0x01, 'a',             //     1: tag "a"
                                  0x15, 0,    0,   0, 0x40});  //     2: float 2.0
  EXPECT_EQ(scalar_event(1.5, 3, "a", 2.0f), want);
  // Event{wall_time=0, step=300, session_log{status=START}}: 300 is the varint AC 02.
  EXPECT_EQ(session_start_event(0.0, 300),
            bytes({0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0xAC, 0x02, 0x3A, 0x02, 0x08, 0x01}));
}

TEST(TensorBoard, ExpertHistogramHoldsTheCountsPerExpert) {
  const Histogram h = expert_histogram({0, 3, 0, 5, 0});
  EXPECT_EQ(h.bucket, (std::vector<double>{0, 3, 0, 5, 0}));
  EXPECT_EQ(h.bucket_limit, (std::vector<double>{0.5, 1.5, 2.5, 3.5, 4.5}));
  EXPECT_EQ(h.min, 1);  // the lowest and highest experts that got tokens
  EXPECT_EQ(h.max, 3);
  EXPECT_EQ(h.num, 8);
  EXPECT_EQ(h.sum, 3 * 1 + 5 * 3);
  EXPECT_EQ(h.sum_squares, 3 * 1 + 5 * 9);
}

TEST(TensorBoard, NewEventFileSortsAfterExistingOnes) {
  testing::TempDir dir;
  // A file from a clock that was ahead: the new file must still sort after it.
  std::ofstream(dir.path() / "events.out.tfevents.9999999990.999999.host.1") << "";
  EventFileWriter a(dir.str());
  EventFileWriter b(dir.str());
  const auto name_a = fs::path(a.path()).filename().string();
  const auto name_b = fs::path(b.path()).filename().string();
  EXPECT_GT(name_a, "events.out.tfevents.9999999990.999999.host.1");
  EXPECT_GT(name_b, name_a);
  // Each file opens with the file_version event, framed as a TFRecord (the length and its CRC
  // do not depend on the wall time).
  a.flush();
  EXPECT_EQ(read_file(a.path()).substr(0, 12), tfrecord(file_version_event(0)).substr(0, 12));
  EXPECT_NE(read_file(a.path()).find("brain.Event:2"), std::string::npos);
}

TEST(TensorBoard, MoeLayerNames) {
  model::ModelConfig m;
  m.num_layers = 4;
  m.num_dense_layers = 1;
  EXPECT_EQ(moe_layer_name(m, 0), "layer1");
  EXPECT_EQ(moe_layer_name(m, 2), "layer3");
  EXPECT_EQ(moe_layer_name(m, 3), "mtp0");
}

}  // namespace
}  // namespace condensa::trainer
