#ifndef METATRAIN_COPENBLAS_SHIM_H
#define METATRAIN_COPENBLAS_SHIM_H
#include <cblas.h>
#endif
