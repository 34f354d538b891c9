#include <gtest/gtest.h>

#include "common/hash.h"

TEST(Hash, StringHashIsStableAndDistinct) {
  EXPECT_EQ(condensa::hash_string("layers.0.w"), condensa::hash_string("layers.0.w"));
  EXPECT_NE(condensa::hash_string("layers.0.w"), condensa::hash_string("layers.1.w"));
}
