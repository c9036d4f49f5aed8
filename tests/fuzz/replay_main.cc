// Replays fuzz inputs without libFuzzer: the unit tier runs every target over its seed corpus
// and every regression input (tests/fuzz/corpus/TARGET, tests/fuzz/regressions/TARGET) in the
// plain and the sanitizer builds, so an input that once broke iopfd is tried on every CI run.
// Arguments: directories (every file in them) or files. A missing or empty directory fails:
// a replay that replays nothing proves nothing.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

int main(int argc, char** argv) {
  size_t replayed = 0;
  for (int i = 1; i < argc; ++i) {
    std::filesystem::path arg(argv[i]);
    std::vector<std::filesystem::path> files;
    std::error_code ec;
    if (std::filesystem::is_directory(arg, ec)) {
      for (const auto& e : std::filesystem::directory_iterator(arg)) {
        if (e.is_regular_file() && e.path().filename().string()[0] != '.') files.push_back(e);
      }
      if (files.empty() && arg.filename() != "regressions" &&
          arg.parent_path().filename() != "regressions") {
        std::fprintf(stderr, "replay: %s holds no input\n", argv[i]);
        return 1;
      }
    } else if (std::filesystem::is_regular_file(arg, ec)) {
      files.push_back(arg);
    } else {
      std::fprintf(stderr, "replay: %s: no such file or directory\n", argv[i]);
      return 1;
    }
    std::sort(files.begin(), files.end());
    for (const auto& f : files) {
      std::ifstream in(f, std::ios::binary);
      std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      std::fprintf(stderr, "replay: %s (%zu bytes)\n", f.c_str(), bytes.size());
      LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
      ++replayed;
    }
  }
  if (replayed == 0) {
    std::fprintf(stderr, "replay: no input replayed\n");
    return 1;
  }
  std::printf("replay: %zu inputs, no invariant broken\n", replayed);
  return 0;
}
