// The run configuration: the schema (one struct per YAML section, trainer/config/schema.h),
// YAML loading and printing (trainer/config/yaml.h) and validation (validate.cpp, every rule
// once). Include this header for all three.
#pragma once

#include "trainer/config/schema.h"
#include "trainer/config/yaml.h"
