"""The OT layer of the dealer-free mode (``--preprocessing ot``): P0 and P1 make correlations
themselves with oblivious transfer. Modules: :mod:`.aes` (fixed-key AES, TCCR, CTR streams),
:mod:`.bitmatrix` (transposes), :mod:`.baseot` (Chou-Orlandi base OTs, libsodium),
:mod:`.ggm` (punctured trees), :mod:`.extension` (IKNP / SoftSpokenOT session), :mod:`.cost`.
"""
