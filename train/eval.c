// train/eval.c: see eval.h.
#include "eval.h"
#include "../data/spm.h"
#include <errno.h>
#include <math.h>
#include <unistd.h>

// "runs/x step 200" or "--init-from DIR": where the weights came from, for the first line of either mode
static void describe_source(const Run* r, char* out, size_t n) {
    if (r->flags->init_from) snprintf(out, n, "--init-from %s (model %s)", r->flags->init_from, r->cfg.name);
    else snprintf(out, n, "%s step %d (model %s)", r->out_dir, r->resume_step, r->cfg.name);
}

// ----------------------------------------------------------------------------
// --eval

// The format of eval.h. A write that fails removes the file: a partial dump is never left to be read.
static void dump_logits(Run* r, const int* tokens, int B, int T) {
    const char* path = r->flags->dump_logits;
    int V = r->cfg.vocab_size;
    FILE* f = fopen(path, "wb");
    if (!f) fatal("flag --dump-logits %s: cannot create it: %s", path, strerror(errno));
    int32_t header[4] = {DUMP_LOGITS_MAGIC, B, T, V};
    int ok = fwrite(header, sizeof(header), 1, f) == 1;
    ok = ok && fwrite(tokens, sizeof(int32_t), (size_t)B * T, f) == (size_t)B * T;
    float* row = xmalloc((size_t)V * sizeof(float));
    for (int n = 0; ok && n < B * T; n++) {
        model_logits_row(&r->model, &r->acts, n, row);
        ok = fwrite(row, sizeof(float), (size_t)V, f) == (size_t)V;
    }
    free(row);
    int err = ok ? 0 : errno;
    if (fclose(f) != 0 && ok) { ok = 0; err = errno; }
    if (!ok) {
        unlink(path);
        fatal("flag --dump-logits %s: writing it failed: %s", path, strerror(err));
    }
}

void eval_validation(Run* r) {
    const Flags* f = r->flags;
    int B = r->B, T = r->T;
    DataLoader* val = &r->val;
    acts_alloc(&r->acts, &r->model, B, T, 0);
    int* inp = xmalloc((size_t)B * T * sizeof(int));
    int* tgt = xmalloc((size_t)B * T * sizeof(int));
    char source[1024];
    describe_source(r, source, sizeof(source));
    printf("eval: %s on --val-data %s\n", source, f->val_data);
    // what train/loop.c's validate() computes on one rank: batch i is windows [i*B, (i+1)*B) of the validation
    // shards in file order, the loss the mean of the batches' mean cross-entropies
    double sum = 0.0;
    int used = 0;
    size_t w = 0;
    for (int i = 0; i < f->val_batches; i++) {
        if (w + (size_t)B > val->n_windows) break;
        for (int b = 0; b < B; b++)
            if (dataloader_window(val, w + (size_t)b, inp + (size_t)b * T, tgt + (size_t)b * T) != 0)
                fatal("%s, read by --eval", val->error);
        w += (size_t)B;
        model_forward(&r->model, &r->acts, inp, tgt, B, T);
        sum += r->model.ce_loss;
        used++;
        if (used == 1 && f->dump_logits) dump_logits(r, inp, B, T);
    }
    free(inp);
    free(tgt);
    // used >= 1: setup_data required one batch
    float loss = (float)(sum / used);  // as the trainer logs it: a float, printed with the log's 7 digits
    printf("val loss %.7g perplexity %.7g tokens %lld (%d batch%s of %d x %d)\n", loss, exp((double)loss),
           (long long)used * B * T, used, used == 1 ? "" : "es", B, T);
    if (f->dump_logits) printf("logits of the first batch: %s\n", f->dump_logits);
}

// ----------------------------------------------------------------------------
// --generate

typedef struct {
    float logit;
    int id;
} Candidate;

// higher logit first, the lower id on ties
static int candidate_order(const void* a, const void* b) {
    const Candidate* x = a;
    const Candidate* y = b;
    if (x->logit != y->logit) return x->logit > y->logit ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

static double uniform01(Rng* rng) { return (double)(rng_u64(rng) >> 11) * (1.0 / 9007199254740992.0); }

// The next token among ids [0, n): temperature 0 the most likely (the lowest id on ties); else a draw from
// softmax(logits / temperature) over the top_k most likely (0: all), in double precision.
static int sample_next(const float* logits, int n, float temperature, int top_k, Rng* rng, Candidate* cand) {
    int best = 0;
    for (int v = 0; v < n; v++) {
        if (!isfinite(logits[v])) fatal("--generate: the model's logit of token %d is %g, not finite", v, logits[v]);
        if (logits[v] > logits[best]) best = v;
    }
    if (temperature == 0.0f) return best;
    for (int v = 0; v < n; v++) cand[v] = (Candidate){logits[v], v};
    int k = n;
    if (top_k > 0 && top_k < n) {
        qsort(cand, (size_t)n, sizeof(Candidate), candidate_order);
        k = top_k;
    }
    double z = 0.0;
    for (int i = 0; i < k; i++) z += exp(((double)cand[i].logit - logits[best]) / temperature);
    double u = uniform01(rng) * z, c = 0.0;
    for (int i = 0; i < k; i++) {
        c += exp(((double)cand[i].logit - logits[best]) / temperature);
        if (c > u) return cand[i].id;
    }
    return cand[k - 1].id;  // u within rounding of z
}

// tokenizer.model in the folder of the --tokenizer file
static void spm_path_beside(const char* tokenizer, char* out, size_t n) {
    const char* slash = strrchr(tokenizer, '/');
    if (slash) snprintf(out, n, "%.*s/tokenizer.model", (int)(slash - tokenizer), tokenizer);
    else snprintf(out, n, "tokenizer.model");
}

void eval_generate(Run* r) {
    const Flags* f = r->flags;
    const Tokenizer* tok = &r->tok;
    Model* m = &r->model;
    if (!tok->loaded) fatal("flag --generate needs the tokenizer: --tokenizer %s does not exist", f->tokenizer);
    char spm_path[1100];
    spm_path_beside(f->tokenizer, spm_path, sizeof(spm_path));
    if (access(spm_path, F_OK) != 0)
        fatal("flag --generate encodes the prompt with the SentencePiece model beside --tokenizer %s, and %s is "
              "missing: %s", f->tokenizer, spm_path, strerror(errno));
    SpmModel spm;
    spm_load(&spm, spm_path);
    char why[512];
    if (!spm_matches_tokenizer(&spm, tok, why, sizeof(why)))
        fatal("tokenizer model %s does not belong to --tokenizer %s: %s", spm_path, f->tokenizer, why);

    // the context: the document separator (every document in the shards starts with it), the prompt, then what is
    // generated; the model sees the last T tokens of it
    int* prompt = NULL;
    int n_prompt = spm_encode(&spm, f->generate, strlen(f->generate), &prompt);
    spm_free(&spm);
    int T = r->T, V = r->cfg.vocab_size, max_new = f->max_new_tokens;
    int* toks = xmalloc(((size_t)n_prompt + 1 + max_new) * sizeof(int));
    toks[0] = tok->separator;
    if (n_prompt) memcpy(toks + 1, prompt, (size_t)n_prompt * sizeof(int));
    free(prompt);
    int len = 1 + n_prompt;
    acts_alloc(&r->sample_acts, m, 1, T, 0);
    float* logits = xmalloc((size_t)V * sizeof(float));
    // only ids the tokenizer can write out (a model's vocab may be padded past the tokenizer's)
    int n_ids = tok->vocab_size;
    Candidate* cand = xmalloc((size_t)n_ids * sizeof(Candidate));
    Rng rng;
    rng_seed(&rng, (uint64_t)f->seed ^ 0x47454E45524154ULL);

    char source[1024];
    describe_source(r, source, sizeof(source));
    fprintf(stderr, "generate: %s, prompt of %d tokens, temperature %g, top-k %d, seed %lld, context %d\n", source,
            n_prompt, f->temperature, f->top_k, f->seed, T);
    // stdout: the prompt as given, then the continuation as it comes
    fputs(f->generate, stdout);
    fflush(stdout);
    int added = 0, stopped = 0;
    while (added < max_new) {
        int start = len > T ? len - T : 0;
        model_forward(m, &r->sample_acts, toks + start, NULL, 1, len - start);
        model_logits_row(m, &r->sample_acts, len - start - 1, logits);
        int next = sample_next(logits, n_ids, f->temperature, f->top_k, &rng, cand);
        if (next == tok->separator) { stopped = 1; break; }
        toks[len++] = next;
        added++;
        tokenizer_print(tok, next, stdout);
        fflush(stdout);
    }
    fputc('\n', stdout);
    fprintf(stderr, "generate: %d new tokens (%s)\n", added, stopped ? "stopped at the document separator" :
            "--max-new-tokens reached");
    free(toks);
    free(logits);
    free(cand);
}

void eval_free(Run* r) {
    if (r->acts.layers) acts_free(&r->acts, &r->model);
    if (r->sample_acts.layers) acts_free(&r->sample_acts, &r->model);
    if (r->flags->init_from) optimizer_free(&r->opt, &r->model);  // setup_model's (the checkpoint path has none)
    model_free(&r->model);
    if (r->have_val) dataloader_free(&r->val);
    tokenizer_free(&r->tok);
}
