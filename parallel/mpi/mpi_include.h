// <mpi.h> for C++ code that links only the MPI C library (MPI::MPI_C).
//
// Open MPI's and MPICH's <mpi.h> pull in the deprecated C++ bindings when compiled as C++, and
// those need libmpi_cxx at link time. condensa uses the C API only, so skip them. Include this
// header instead of <mpi.h>.
#pragma once

#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>
