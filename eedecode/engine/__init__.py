"""The decoding engine: the loop's state on the device and its one host synchronisation per
round (:mod:`.decoder`), token choice after the logits processors (:mod:`.chooser`,
:mod:`.processors`), the acceptance rules (:mod:`.acceptance`), and the interface every decoding
mode implements, with the registry of modes (:mod:`.mode`)."""
