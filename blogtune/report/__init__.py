"""blogtune.report"""
