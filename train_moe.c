// train_moe.c: the one binary, as the outline of a run: parse the flags, set up, run the loop, finish.
//
//   ./train_moe --model k2-nano                       train on the default corpus (make data)
//   ./train_moe --model k2-nano --resume              continue the run in --out from its newest checkpoint
//   ./train_moe --eval --out RUN                      validation loss of RUN's newest checkpoint (train/eval.h)
//   ./train_moe --generate "Call me" --out RUN        continue a prompt with it
//   ./train_moe --export-hf DIR --out RUN            the run's newest checkpoint as a Hugging Face directory
//   ./train_moe --init-from DIR                       train starting from a Hugging Face DeepSeek-V3 directory
//   ./train_moe --help                                every flag
//   mpirun -np 4 ./train_moe --ep 2 --optim muon      4 ranks: data parallel, experts split over pairs of ranks
//
// The set-up is train/setup.c, the loop (the step and its policies, validation, samples, checkpoints)
// train/loop.c, what a run prints and logs train/report.c.
#include "common.h"
#include "train/flags.h"
#include "train/settings.h"
#include "train/setup.h"
#include "train/loop.h"
#include "train/report.h"
#include "train/log.h"
#include "train/eval.h"
#include "train/hf.h"

static void list_models(void) {
    for (int i = 0; config_preset_names[i]; i++) {
        ModelConfig c;
        config_from_preset(&c, config_preset_names[i]);
        config_print(&c, stdout);
    }
    printf("--model also takes a path to a DeepSeek-V3 config.json (a Hugging Face DeepseekV3ForCausalLM config, e.g. "
           "one --export-hf wrote) or to the folder that holds it\n");
}

int main(int argc, char** argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    Comm comm;
    comm_init(&comm, &argc, &argv);  // first: from here on a fatal error on any rank ends every rank
    if (comm.rank != 0 && !freopen("/dev/null", "w", stdout)) fatal("cannot silence stdout on rank %d", comm.rank);

    // --- parse
    static Flags flags;  // the command line (train/flags.c has the table of flags)
    flags_init(&flags);
    flags_parse(&flags, argc, argv);
    settings_agree(&comm, &flags);  // before any other collective: ranks with other flags would hang in one
    if (flags.help || flags.list_models) {
        if (flags.help) flags_print_help();
        else list_models();
        comm_finalize(&comm);
        return 0;
    }
    flags_check(&flags);
    if (flags.export_hf) {  // a checkpoint of --out as a Hugging Face directory, then exit (train/hf.c)
        hf_export(&flags, &comm);
        comm_finalize(&comm);
        return 0;
    }

    // --- set up (every input is checked before anything is written)
    static Run run;
    setup_config(&run, &flags, &comm);
    if (flags.print_layout) {
        checkpoint_print_layout(&run.cfg, stdout);  // (rank 0's: the others' stdout is silenced)
        comm_finalize(&comm);
        return 0;
    }
    if (flags.eval || flags.generate) {  // looking at a model (train/eval.c): reads the run, writes nothing into it
        setup_read_only(&run);
        setup_backend(&run);
        setup_data(&run);
        setup_model_read_only(&run);
        if (flags.eval) eval_validation(&run);
        else eval_generate(&run);
        eval_free(&run);
        comm_finalize(&comm);
        return 0;
    }
    setup_backend(&run);
    setup_data(&run);
    setup_start(&run);
    setup_model(&run);
    setup_run_dir(&run);
    setup_step(&run);
    report_banner(&run);

    // --- the loop
    run_loop(&run);

    // --- finish
    run_finish(&run);
    run_free(&run);
    log_close();
    if (log_failed()) fatal("--out %s: writing %s failed: %s", run.out_dir, log_path(), log_error());
    comm_finalize(&comm);
    return 0;
}
