import os
import sys

# tests import the lesson's verbatim code (lesson_original.py) from this folder
sys.path.insert(0, os.path.dirname(__file__))
