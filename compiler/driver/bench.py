"""bench"""
def add_arguments(p):
    p.add_argument("target")
def main(args):
    return 0
