"""hardway: provision and verify a Kubernetes-the-Hard-Way cluster on lab machines."""
