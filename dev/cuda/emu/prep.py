"""dev/cuda/emu/prep.py: rewrites a .cu file into host C++ for the CPU emulator (run.sh): dynamic shared memory
becomes a per-block buffer, kernel<<<grid, block, smem>>>(args) becomes emu_launch(kernel, "kernel", grid, block, smem)(args)."""
import re, sys
src, dst = sys.argv[1], sys.argv[2]
s = open(src).read()
s = re.sub(r'extern __shared__ (?:__align__\(\d+\) )?([\w ]+?) (\w+)\[\];', r'\1* \2 = (\1*)emu_dyn_smem();', s)
# kernel<<<cfg>>>(  ->  emu_launch(kernel, "kernel", cfg)(   (the name, template arguments dropped, is what
# emu_cost.cpp's table of FLOP/byte formulas is keyed by)
s, n = re.subn(r'([\w:]+(?:<[^<>;()]*>)?)\s*<<<(.*?)>>>\s*\(',
               lambda m: 'emu_launch(%s, "%s", %s)(' % (m.group(1), m.group(1).split('<')[0], m.group(2)), s, flags=re.S)
# cuda_common.cuh is found through -I model/cuda
open(dst, 'w').write('// generated from %s for CPU emulation (%d launches rewritten)\n' % (src, n) + s)
print(src, n, "launches")
