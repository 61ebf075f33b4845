# dev/cuda/ns_bf16_error.py: how far Newton-Schulz with bf16 GEMM operands lands from the exact (float64) iteration,
# in a float64 model of model/cuda/optim.cu's bf16 path ("bf16": X, A = X X^T, B = b A + c A A and X' = a X + B X
# each rounded once to bf16 as a GEMM with fp32 accumulation and a beta term rounds it, the last X' kept) and of the
# variant tried first ("mixed": an fp32 X beside its bf16 copy, a X added in fp32: each step mixes two matrices and
# lands further away). Prints the relative L2 distance to float64 and the output's singular-value band, for
# expert-like shapes (k2-small: w1 / w3 288 x 1024, w2 1024 x 288). tests/test_cuda.c's bf16 tolerance rests on it.
#   /usr/bin/python3 dev/cuda/ns_bf16_error.py
import torch

DEFAULT = [(3.4445, -4.7750, 2.0315)] * 5
POLAR = [(8.156554524902461, -22.48329292557795, 15.878769915207462),
         (4.042929935166739, -2.808917465908714, 0.5000178451051316),
         (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
         (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
         (2.3465413258596377, -1.7097828382687081, 0.42323551169305323)]


def bf(t):
    return t.bfloat16().double()


def newton_schulz(x, coeffs, mode):
    """mode: 'fp64' exact, 'bf16' (optim.cu's bf16 path), 'mixed' (fp32 X, bf16 operands)"""
    X = x / (x.norm() + 1e-7)
    tall = X.shape[0] > X.shape[1]
    if tall:
        X = X.T
    if mode == "bf16":
        X = bf(X)
    for s, (a, b, c) in enumerate(coeffs):
        Xh = X if mode == "fp64" else bf(X)
        A = Xh @ Xh.T
        if mode != "fp64":
            A = bf(A)
        B = b * A + c * A @ A
        if mode != "fp64":
            B = bf(B)
        X = a * X + B @ Xh
        if mode == "bf16" and s < len(coeffs) - 1:
            X = bf(X)
    return X.T if tall else X


def main():
    torch.manual_seed(0)
    for name, coeffs in (("default", DEFAULT), ("polar", POLAR)):
        for shape in ((72, 256), (256, 72), (40, 136), (37, 21), (288, 1024), (1024, 288)):
            x = (torch.rand(*shape, dtype=torch.float64) * 2 - 1) * 0.02
            ref = newton_schulz(x, coeffs, "fp64")
            sv = torch.linalg.svdvals(ref)
            line = "%-7s %4dx%-4d  fp64 sv [%.3f, %.3f]" % (name, shape[0], shape[1], sv.min(), sv.max())
            for mode in ("bf16", "mixed"):
                out = newton_schulz(x, coeffs, mode)
                sv = torch.linalg.svdvals(out)
                line += "  %s: rel L2 %.2e sv [%.3f, %.3f]" % (mode, ((out - ref).norm() / ref.norm()).item(),
                                                               sv.min(), sv.max())
            print(line)


if __name__ == "__main__":
    main()
