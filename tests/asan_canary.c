// tests/asan_canary.c: shows that tests/run_asan.sh would see a sanitizer finding. `asan_canary heap` reads one
// element past a malloc'd array (AddressSanitizer), `asan_canary ubsan` overflows a signed int (UBSan),
// `asan_canary leak` drops its only pointer to a block (LeakSanitizer); built with the sanitizer flags, each must
// leave a report and a non-zero exit. With no argument it does nothing wrong.
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char** argv) {
    const char* kind = argc > 1 ? argv[1] : "";
    volatile int n = 8;  // volatile: the compiler may not see the error coming and drop it
    if (!strcmp(kind, "heap")) {
        int* a = malloc(n * sizeof(int));
        for (int i = 0; i < n; i++) a[i] = i;
        int past_the_end = a[n];
        printf("read %d\n", past_the_end);
        free(a);
    } else if (!strcmp(kind, "ubsan")) {
        volatile int big = INT_MAX;
        int sum = big + n;
        printf("sum %d\n", sum);
    } else if (!strcmp(kind, "leak")) {
        void* volatile lost = malloc(1000);
        lost = NULL;
        (void)lost;
    }
    return 0;
}
