"""Training methods (AGW, CAJ, MSCLNet): model + augmentation + losses, built from plain arguments."""
