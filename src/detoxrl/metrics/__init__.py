"""Pure figures of texts and arrays: statistics with bootstrap and jackknife intervals, the toxic tail over
k samples, evasion and degeneration of responses, the training-time quality guards. numpy and scipy only;
knows nothing of models or torch."""
