#pragma once
typedef void* cublasLtHandle_t;
