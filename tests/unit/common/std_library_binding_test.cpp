// Which library our std::filesystem calls bind to. LibTorch 2.x (libtorch.so, libtorch_cpu.so)
// exports its own copies of std::filesystem; the one in libtorch.so jumps to address 0 inside
// remove_all when run against the system libstdc++. CMakeLists.txt puts libstdc++ before
// LibTorch on the link line so that the dynamic linker's global lookup finds libstdc++ first.
// dlsym(RTLD_DEFAULT, ...) performs that same global lookup; dladdr names the library found.
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "tests/support/test_util.h"

namespace fs = std::filesystem;

namespace {

std::string library_defining(const char* mangled) {
  void* sym = dlsym(RTLD_DEFAULT, mangled);
  if (sym == nullptr) return "<not found>";
  Dl_info info{};
  if (dladdr(sym, &info) == 0 || info.dli_fname == nullptr) return "<unknown>";
  return info.dli_fname;
}

}  // namespace

TEST(StdLibraryBinding, FilesystemResolvesToLibstdcxxNotLibTorch) {
  const char* symbols[] = {
      "_ZNSt10filesystem10remove_allERKNS_7__cxx114pathE",                 // remove_all(p)
      "_ZNSt10filesystem10remove_allERKNS_7__cxx114pathERSt10error_code",  // remove_all(p, ec)
      "_ZNSt10filesystem18create_directoriesERKNS_7__cxx114pathE",
      "_ZNSt10filesystem6renameERKNS_7__cxx114pathES3_",
      "_ZNSt10filesystem9file_sizeERKNS_7__cxx114pathE",
  };
  for (const char* s : symbols) {
    const std::string lib = library_defining(s);
    EXPECT_NE(lib.find("libstdc++"), std::string::npos) << s << " binds to " << lib;
  }
}

// Pruning a checkpoint removes a tree of directories and files: count what remove_all removes
// against what was made, and that nothing is left.
TEST(StdLibraryBinding, RemoveAllDeletesANestedTree) {
  condensa::testing::TempDir dir("rm");
  const fs::path top = dir.path() / "step_00000001";
  std::uintmax_t made = 1;  // top itself
  for (int d = 0; d < 3; ++d) {
    const fs::path sub = top / ("sub" + std::to_string(d)) / "deeper";
    fs::create_directories(sub);
    made += 2;
    for (int f = 0; f <= d; ++f) {
      std::ofstream(sub / ("f" + std::to_string(f))) << "payload " << d << f;
      ++made;
    }
  }
  std::error_code ec;
  EXPECT_EQ(fs::remove_all(top, ec), made);
  EXPECT_FALSE(ec) << ec.message();
  EXPECT_FALSE(fs::exists(top));
}
