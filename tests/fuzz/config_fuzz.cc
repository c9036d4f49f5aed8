// Configuration text through the entry point that --check-config, start-up and Reload use
// (LoadConfig: the global file and every device file), and through the Adopt checks (the text
// of an Adopt call, or of an adoption the fd store kept).
//
// Input: the global file, then up to three device files, separated by NUL bytes.
// Invariants: nothing throws or crashes (toml++ included: it is compiled in and instrumented);
// a configuration is valid exactly when it has no errors; every error names one of the files
// with a line and column inside it; a valid device compares equal to itself (Reload's test).
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "fuzz_input.h"
#include "iopfd/config/config.h"
#include "iopfd/control/control_methods.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace iopfd;        // NOLINT(google-build-using-namespace)
  using namespace iopfd::fuzz;  // NOLINT(google-build-using-namespace)
  // One scratch directory per process, on tmpfs when there is one.
  static const std::filesystem::path dir = [] {
    std::filesystem::path base =
        std::filesystem::exists("/dev/shm") ? "/dev/shm" : std::filesystem::temp_directory_path();
    std::filesystem::path d = base / ("iopfd-fuzz-config-" + std::to_string(getpid()));
    std::filesystem::create_directories(d / "devices.d");
    return d;
  }();
  Input in(data, size);
  const std::string global(in.Until('\0'));
  std::ofstream(dir / "iopfd.toml", std::ios::binary | std::ios::trunc) << global;
  std::filesystem::remove_all(dir / "devices.d");
  std::filesystem::create_directories(dir / "devices.d");
  std::vector<std::string> texts;
  for (int i = 0; i < 3 && !in.empty(); ++i) {
    texts.emplace_back(in.Until('\0'));
    std::ofstream(dir / "devices.d" / (std::to_string(i) + ".toml"),
                  std::ios::binary | std::ios::trunc)
        << texts.back();
  }
  try {
    LoadOptions options;
    options.global_path = dir / "iopfd.toml";
    options.devices_dir = (dir / "devices.d").string();
    options.check_backings = false;  // backings name paths: never open what the input names
    LoadResult r = LoadConfig(options);
    FUZZ_CHECK(r.ok() == r.errors.empty());
    for (const ConfigError& e : r.errors) {
      FUZZ_CHECK(e.where.file.rfind(dir.string(), 0) == 0, e.ToString());
      FUZZ_CHECK(e.where.line >= 0 && e.where.column >= 0, e.ToString());
      (void)e.ToString();
    }
    for (const DeviceConfig& d : r.config.devices) {
      FUZZ_CHECK(SameDeviceSettings(d, d), d.name);
    }
    for (const std::string& t : texts) {
      AdoptRequest req = ParseAdoptConfig(t);
      FUZZ_CHECK(req.config.has_value() != !req.errors.empty());
    }
  } catch (const std::exception& e) {
    Fail("configuration loading threw", e.what());
  }
  return 0;
}
