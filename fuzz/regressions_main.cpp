// SPDX-License-Identifier: MIT
// Replays fuzz inputs through their targets in an ordinary build (a CTest test): the seed corpus
// (fuzz/corpus/<target>/) and every input a fuzzer ever crashed on (fuzz/regressions/<target>/),
// so a fixed fault stays fixed. A target that crashes or breaks a property aborts the run.
//   distill_fuzz_regressions <folder>...     each folder holds one sub-folder per target
// (a folder that does not exist is skipped: fuzz/regressions/ appears with the first finding).
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "distill/core/file_io.hpp"
#include "targets.hpp"

namespace fs = std::filesystem;

int main(int argc, char** argv) {
  int files = 0;
  for (int a = 1; a < argc; ++a) {
    if (!fs::is_directory(argv[a])) continue;
    std::vector<fs::path> inputs;  // <folder>/<target>/<input>
    for (const auto& sub : fs::directory_iterator(argv[a]))
      if (sub.is_directory())
        for (const auto& e : fs::directory_iterator(sub.path()))
          if (e.is_regular_file()) inputs.push_back(e.path());
    std::sort(inputs.begin(), inputs.end());
    for (const auto& p : inputs) {
      const std::string target = p.parent_path().filename().string();
      const auto* t = distill_fuzz::find_target(target);
      if (!t) {
        std::fprintf(stderr, "distill_fuzz_regressions: %s is in a folder named after no target\n", p.c_str());
        return 1;
      }
      std::vector<unsigned char> bytes;
      if (const distill::status st = distill::read_file("distill_fuzz_regressions", p.string(), bytes); !st.ok()) {
        std::fprintf(stderr, "%s\n", st.to_string().c_str());
        return 1;
      }
      std::printf("%-22s %s (%zu bytes)\n", target.c_str(), p.filename().c_str(), bytes.size());
      std::fflush(stdout);
      t->run(bytes);
      ++files;
    }
  }
  std::printf("distill_fuzz_regressions: %d inputs replayed, no crash and no broken property\n", files);
  return files > 0 ? 0 : 1;
}
