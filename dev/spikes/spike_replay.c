// dev/spikes/spike_replay.c: the trainer's spike detector (train/spikes.c, the same code) run over a logged
// sequence of (loss, grad norm), so that a detector can be scored on runs an older build trained: the detector
// never changes training without --skip-spikes, so a run's losses do not depend on it.
//
//   build: cc -O2 -std=gnu11 -Itrain dev/spikes/spike_replay.c train/spikes.c -lm -o spike_replay
//   use:   spike_replay SPIKE_Z WINDOW < lines of "step loss grad_norm"
//          (dev/spikes/detector_eval.py --replay builds and runs it)
//   out:   one line "step loss z_loss grad_norm z_norm" per step the detector calls a spike
// Every step's values enter the window after its verdict, as in the trainer without --skip-spikes. The loss is
// rounded to float as the trainer holds it (the log's 7 digits of a float read back to the same float almost
// always; a verdict within ~1e-6 of the threshold could differ).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include "spikes.h"

static SpikeStats stats;  // 16 KiB: static rather than on the stack

int main(int argc, char** argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: spike_replay SPIKE_Z WINDOW < \"step loss grad_norm\" lines\n");
        return 2;
    }
    double spike_z = atof(argv[1]);
    spikes_init(&stats, atoi(argv[2]));
    int step;
    double loss_in, norm_in;
    while (scanf("%d %lf %lf", &step, &loss_in, &norm_in) == 3) {
        float loss = (float)loss_in, norm = (float)norm_in;  // the trainer's StepStats holds floats
        if (!isfinite(loss) || !isfinite(norm)) continue;    // never pushed, never a verdict
        double z_loss, z_norm;
        if (spikes_verdict(&stats, loss, norm, spike_z, &z_loss, &z_norm))
            printf("%d %.7g %.4g %.7g %.4g\n", step, loss, z_loss, norm, z_norm);
        spikes_push(&stats, loss, norm);
    }
    return 0;
}
