// The test runner: GoogleTest, closing with the one line CI reads.
#include <gtest/gtest.h>

#include <cstdio>

#include "nn.hpp"

namespace {
// Prints "N passed, M failed" (and skipped) after everything else.
class CountLine : public ::testing::EmptyTestEventListener {
    void OnTestProgramEnd(const ::testing::UnitTest& u) override {
        std::printf("%d passed, %d failed", u.successful_test_count(), u.failed_test_count());
        if (u.skipped_test_count()) std::printf(", %d skipped", u.skipped_test_count());
        std::printf("\n");
        std::fflush(stdout);
    }
};
}  // namespace

int main(int argc, char** argv) {
    ::testing::InitGoogleTest(&argc, argv);
    std::printf("nn tests: simd=%s\n", nn::simd_arch());
    ::testing::UnitTest::GetInstance()->listeners().Append(new CountLine);
    return RUN_ALL_TESTS();
}
