"""The SDK a training script imports (`import trainyard.sdk as ty`): standard library only, so it loads in any
interpreter the script runs in. The service's own packages never come in here, nor the other way round."""
