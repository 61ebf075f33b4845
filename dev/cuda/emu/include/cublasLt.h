#pragma once
#include "cublas_v2.h"
typedef void* cublasLtHandle_t;
static inline cublasStatus_t cublasLtCreate(cublasLtHandle_t* h) { *h = (cublasLtHandle_t)0x1; return CUBLAS_STATUS_SUCCESS; }
