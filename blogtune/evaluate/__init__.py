"""blogtune.evaluate"""
