"""The ``darec`` command line: :mod:`.main` dispatches to LightningCLI (:mod:`.fit`) and to darec's own commands
(:mod:`.data`, :mod:`.demo`, :mod:`.recommend`, :mod:`.export`, :mod:`.search`); :mod:`.launch` starts multi-node runs."""
